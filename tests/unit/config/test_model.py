"""Schema checks of proxy.config.model that the loader tests do not already cover: RE2 regexes and the
listener's `http.path_normalization`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.config.model import ClusterTlsConfig, HttpConfig, RouteMatchConfig, StringMatcherConfig, compile_regex


@pytest.mark.parametrize(("pattern", "says"), [
    (r"(a)\1", "backreferences"),
    (r"(?P<n>a)(?P=n)", "backreferences"),
    (r"\k<n>", "backreferences"),
    (r"(?=x)", "lookahead and lookbehind"),
    (r"(?!x)", "lookahead and lookbehind"),
    (r"a(?<=a)", "lookahead and lookbehind"),
    (r"(?<!a)b", "lookahead and lookbehind"),
])
def test_re2_refusals_are_said_plainly(pattern: str, says: str) -> None:
    with pytest.raises(ValueError, match="bad regex") as refused:
        compile_regex(pattern)
    assert says in str(refused.value) and "RE2" in str(refused.value)


def test_other_refusals_carry_re2s_reason() -> None:
    with pytest.raises(ValueError, match=r"bad regex '\(a': not RE2 syntax: missing \)"):
        compile_regex("(a")


def test_every_regex_key_is_checked_with_re2() -> None:
    for build in (lambda: RouteMatchConfig(regex=r"(a)\1"), lambda: StringMatcherConfig(regex="(?=x)")):
        with pytest.raises(ValidationError, match="not RE2 syntax"):
            build()
    # RE2 syntax that Python's `re` does not know is accepted.
    assert RouteMatchConfig(regex=r"/\pL+/[[:digit:]]+").regex


def test_path_normalization_is_base_by_default_and_one_of_istios_names() -> None:
    assert HttpConfig().path_normalization == "base"
    assert HttpConfig(path_normalization="decode_and_merge_slashes").path_normalization == "decode_and_merge_slashes"
    with pytest.raises(ValidationError):
        HttpConfig(path_normalization="BASE")  # type: ignore[arg-type]


@pytest.mark.parametrize("identity", ["campaign-service", "spiffe://cluster.local", "https://cluster.local/ns/a"])
def test_a_clusters_expect_identity_must_be_a_spiffe_id(identity: str) -> None:
    with pytest.raises(ValidationError, match="expect_identity must be a SPIFFE ID"):
        ClusterTlsConfig(ca="ca.pem", expect_identity=identity)
    assert ClusterTlsConfig(ca="ca.pem", expect_identity="spiffe://cluster.local/ns/a/sa/b").expect_identity
