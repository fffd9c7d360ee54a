"""API keys files: the format (SHA-256 hex digest -> service name), every problem named by file and line
without quoting a key, and the stores that re-read a changed file (a bad new file keeps the old keys)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import pytest

from proxy.filters.keysfile import MAX_BYTES, KeysFileError, KeyStores, parse_keys, read_keys_file


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def replace(path: Path, text: str) -> None:
    """Write a new version the way a careful operator (or Kubernetes) does: a new file renamed over."""
    new = path.with_suffix(".new")
    new.write_text(text)
    os.replace(new, path)


def test_a_keys_file_maps_digests_to_service_names() -> None:
    keys = parse_keys(f"{sha('k1')}: campaign-service\n{sha('k2').upper()}: billing\n".encode(), "/k.yaml")
    assert keys.lookup(b"k1") == "campaign-service"
    assert keys.lookup(b"k2") == "billing"  # upper-case hex reads the same
    assert keys.lookup(b"k3") is None


def test_a_digest_of_digits_only_stays_text_and_names_may_look_like_other_scalars() -> None:
    digits = "1" * 64  # YAML 1.1 would make this an integer
    keys = parse_keys(f"{digits}: 'true'\n{sha('b')}: 123\n".encode(), "/k.yaml")
    assert keys.digests[0] == bytes.fromhex(digits) and keys.names == ("true", "123")


def test_an_empty_mapping_allows_no_key_but_an_empty_file_is_refused() -> None:
    assert len(parse_keys(b"{}\n", "/k.yaml")) == 0
    for empty in (b"", b"\n# nothing yet\n"):
        with pytest.raises(KeysFileError, match=r"^keys file /k.yaml: the file is empty \(write \{\} for"):
            parse_keys(empty, "/k.yaml")


@pytest.mark.parametrize(("text", "line", "message"), [
    ("- a\n- b\n", 1, "must be a mapping of SHA-256 hex digests of keys to service names"),
    ("plain-secret-key-123: campaign\n", 1, "a key must be the SHA-256 digest of an API key, 64 hex digits"),
    (f"{sha('a')}: a\n{sha('a')[:-1]}: b\n", 2, "a key must be the SHA-256 digest"),
    (f"{sha('a')}: a\n{sha('a')}z: b\n", 2, "a key must be the SHA-256 digest"),
    (f"{sha('a')}: a\n\n{sha('a')}: b\n", 3, "the same digest twice (first at line 1)"),
    (f"{sha('a')}: a\n{sha('a').upper()}: b\n", 2, "the same digest twice (first at line 1)"),
    (f"{sha('a')}:\n", 1, "the service name must be a non-empty string"),
    (f"{sha('a')}: ~\n", 1, "the service name must be a non-empty string"),
    (f"{sha('a')}: ''\n", 1, "the service name must be a non-empty string"),
    (f"{sha('a')}: [a, b]\n", 1, "the service name must be a non-empty string"),
    (f"{sha('a')}: \"bad\\nname\"\n", 1, "the service name must not contain control characters"),
    ("[a, b]: x\n", 1, "a key must be the SHA-256 digest"),
    ("secret-key-in-a-flow: {\n", 2, "YAML syntax error"),
    ("a: 1\n---\nb: 2\n", 2, "YAML syntax error"),
])
def test_problems_name_the_file_and_line_and_never_quote_a_key(text: str, line: int, message: str) -> None:
    with pytest.raises(KeysFileError) as caught:
        parse_keys(text.encode(), "/etc/keys.yaml")
    error = caught.value
    assert str(error).startswith(f"keys file /etc/keys.yaml:{line}: {message}"), str(error)
    assert (error.line, error.path) == (line, "/etc/keys.yaml")
    assert "secret" not in str(error) and sha("a")[:16] not in str(error)


def test_not_utf8_and_oversize_files_are_refused() -> None:
    with pytest.raises(KeysFileError, match=r"^keys file /k.yaml:2: not UTF-8 text"):
        parse_keys(b"{}\n\xff\n", "/k.yaml")
    with pytest.raises(KeysFileError, match=f"larger than {MAX_BYTES} bytes"):
        parse_keys(b"#" * (MAX_BYTES + 1), "/k.yaml")


def test_a_missing_or_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeysFileError, match=r"^keys file .*/absent.yaml: cannot read it: No such file"):
        read_keys_file(str(tmp_path / "absent.yaml"))
    with pytest.raises(KeysFileError, match=r"cannot read it: Is a directory"):
        read_keys_file(str(tmp_path))


# --- stores ------------------------------------------------------------------------------------------------


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(f"{sha('old-key')}: campaign\n")
    return path


def test_routes_naming_one_file_share_its_store(keys_file: Path) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    assert stores.store(str(keys_file)) is store and stores.paths == [str(keys_file)]
    assert store.keys.lookup(b"old-key") == "campaign"
    with pytest.raises(KeysFileError):
        stores.store(str(keys_file.parent / "absent.yaml"))
    assert stores.paths == [str(keys_file)]


def test_a_changed_file_is_read_again(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    before = store.keys
    stores.refresh()
    assert store.keys is before  # unchanged: nothing read
    replace(keys_file, f"{sha('new-key')}: campaign\n{sha('other')}: billing\n")
    with caplog.at_level(logging.INFO, logger="proxy.filters.keysfile"):
        stores.refresh()
    assert store.keys.lookup(b"new-key") == "campaign" and store.keys.lookup(b"old-key") is None
    assert f"api keys: {keys_file} re-read: 2 key(s) (1 before)" in caplog.text


def test_an_edit_in_place_is_seen_too(keys_file: Path) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    with keys_file.open("a") as handle:
        handle.write(f"{sha('added')}: search\n")
    stores.refresh()
    assert store.keys.lookup(b"added") == "search" and store.keys.lookup(b"old-key") == "campaign"


def test_a_touched_file_with_the_same_content_changes_nothing(keys_file: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    before = store.keys
    replace(keys_file, keys_file.read_text())
    with caplog.at_level(logging.INFO, logger="proxy.filters.keysfile"):
        stores.refresh()
    assert store.keys is before and caplog.text == ""


@pytest.mark.parametrize("bad", ["", "not: [a mapping of digests\n", "my-plain-secret-key: campaign\n"])
def test_a_bad_new_file_keeps_the_old_keys_and_says_so_once(keys_file: Path, caplog: pytest.LogCaptureFixture,
                                                            bad: str) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    replace(keys_file, bad)
    with caplog.at_level(logging.INFO, logger="proxy.filters.keysfile"):
        stores.refresh()
        stores.refresh()
    assert store.keys.lookup(b"old-key") == "campaign"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith(f"api keys: keys file {keys_file}")
    assert errors[0].getMessage().endswith("; keeping the 1 key(s) read before")
    # A good file after the bad one is taken.
    replace(keys_file, f"{sha('fixed')}: campaign\n")
    stores.refresh()
    assert store.keys.lookup(b"fixed") == "campaign"


def test_a_removed_file_keeps_the_old_keys_until_it_comes_back(keys_file: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    stores = KeyStores()
    store = stores.store(str(keys_file))
    keys_file.unlink()
    with caplog.at_level(logging.INFO, logger="proxy.filters.keysfile"):
        stores.refresh()
        stores.refresh()
    assert store.keys.lookup(b"old-key") == "campaign"
    assert caplog.text.count("cannot read it: No such file or directory; keeping the 1 key(s)") == 1
    keys_file.write_text(f"{sha('back')}: campaign\n")
    stores.refresh()
    assert store.keys.lookup(b"back") == "campaign"


def test_keys_and_digests_are_never_logged(keys_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    stores = KeyStores()
    stores.store(str(keys_file))
    with caplog.at_level(logging.DEBUG):
        replace(keys_file, f"{sha('k-two')}: campaign\nk-plain-pasted-by-mistake: billing\n")
        stores.refresh()
        replace(keys_file, f"{sha('k-two')}: campaign\n")
        stores.refresh()
    assert caplog.records
    for text in ("k-plain", "k-two", sha("k-two")[:12], sha("old-key")[:12]):
        assert text not in caplog.text


def test_files_no_route_names_are_no_longer_watched(keys_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("{}\n")
    stores = KeyStores()
    stores.store(str(keys_file))
    stores.store(str(other))
    stores.retain({str(other)})
    assert stores.paths == [str(other)]


async def test_the_watcher_polls_in_the_background(keys_file: Path) -> None:
    stores = KeyStores(interval=0.02)
    store = stores.store(str(keys_file))
    task = asyncio.create_task(stores.watch())
    try:
        replace(keys_file, f"{sha('polled')}: campaign\n")
        for _ in range(200):
            if store.keys.lookup(b"polled"):
                break
            await asyncio.sleep(0.01)
        assert store.keys.lookup(b"polled") == "campaign"
        replace(keys_file, "broken: [\n")
        await asyncio.sleep(0.1)
        assert store.keys.lookup(b"polled") == "campaign"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
