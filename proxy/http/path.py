"""Request-path normalization: the one path that routes match and that goes upstream.

Owns the listener's `http.path_normalization` modes, Istio's options with Envoy's meanings
(Istio `MeshConfig.pathNormalization`; Envoy `normalize_path`, `merge_slashes`,
`path_with_escaped_slashes_action`), applied in Envoy's order (escaped slashes, then canonical path,
then merged slashes):
- `none`: the path as received.
- `base` (the default): what Envoy's `normalize_path` does (Chromium's URL path canonicalizer, RFC 3986
  section 6.2.2): backslashes become `/` (Istio: `\\da` is `/da`); percent-encoded unreserved characters
  (ALPHA, DIGIT, `-`, `.`, `_`, `~`; either hex case) are decoded; every other escape is kept exactly as
  sent, hex case included (so `%2F` and `%5C` stay encoded); dot segments (`.`, `..`, also spelled `%2E`)
  are removed as RFC 3986 section 5.2.4 says.
- `merge_slashes`: `base`, then every run of `/` becomes one.
- `decode_and_merge_slashes`: `%2F` / `%2f` become `/` and `%5C` / `%5c` become `\\` (hence `/`) first,
  then `merge_slashes` (Envoy's UNESCAPE_AND_FORWARD, which is what Istio configures for this option).

Refused (the caller answers 400): a `..` that would climb above the root (Envoy and RFC 3986 clamp it to
`/`; a client that sends it is broken or probing, and the user contract refuses it), and an encoded NUL (`%00`,
which Envoy refuses too). Kept as Envoy keeps it: a `%` that does not start a valid escape, except that it
becomes `%25` when decoding would otherwise turn it into a new escape (`%%361dmin` must not come out as
`%61dmin`, which the upstream would decode to `admin` although routes never saw `admin`): normalizing
twice gives what normalizing once gave. Characters Chromium would percent-encode but llhttp accepts raw
(`"<>\\`{}|^`) are passed as received.

Also owns cutting the fragment off a request target (`without_fragment`).

Must not: let `normalize_path` see the query string or fragment (the codec splits them off first),
allocate when there is nothing to normalize (the common path returns its input object), or raise on any
input.
"""

from __future__ import annotations

from typing import Final

NONE: Final = 0
BASE: Final = 1
MERGE_SLASHES: Final = 2
DECODE_AND_MERGE_SLASHES: Final = 3

# The config's names for the modes (the values of `http.path_normalization`).
MODES: Final[dict[str, int]] = {
    "none": NONE,
    "base": BASE,
    "merge_slashes": MERGE_SLASHES,
    "decode_and_merge_slashes": DECODE_AND_MERGE_SLASHES,
}

_SLASH: Final = 47  # ord("/")
_PERCENT: Final = 37  # ord("%")
_BACKSLASH: Final = 92  # ord("\\")
_DOT: Final = 46  # ord(".")
_HASH: Final = 35  # ord("#")
# byte -> its value as a hex digit, or 16 when it is none (a table: int() would accept "+1" and " 1").
_HEX: Final = bytes(int(chr(b), 16) if chr(b) in "0123456789abcdefABCDEF" else 16 for b in range(256))
# byte -> 1 when it is an RFC 3986 unreserved character (an escape of one is decoded).
_UNRESERVED: Final = bytes(
    1 if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b in b"-._~") else 0 for b in range(256))
# The decoded unreserved characters as one-byte strings, indexed by value.
_CHARS: Final = tuple(bytes((b,)) for b in range(256))


def without_fragment(target: bytes) -> bytes:
    """The request target without its fragment (`#...`): client-side only (RFC 9110 section 7.1), so it is
    never forwarded, and it is cut before anything else reads the target."""
    if _HASH in target:
        return target[:target.find(b"#")]
    return target


def normalize_path(path: bytes, mode: int) -> bytes | None:
    """`path` (without query or fragment) normalized as `mode` says; None when it must be refused (it
    climbs above the root, or encodes NUL). A path that is not origin-form (`*`) is returned as is."""
    if mode == NONE or not path or path[0] != _SLASH:
        return path
    # The fast path, taken by nearly every request: no escape, backslash or dot segment (every dot segment
    # follows a `/`, and most paths have no `.` at all), and no `//` where slashes are merged. A byte test
    # with an int is a bare memchr; a `find`, or `in` with a bytes needle, first parses its arguments or
    # takes a buffer (with `find` for every test, this took four times as long).
    if (_PERCENT not in path and _BACKSLASH not in path and (_DOT not in path or path.find(b"/.") < 0)
            and (mode == BASE or path.find(b"//") < 0)):
        return path
    return _normalize(path, mode)


def _normalize(path: bytes, mode: int) -> bytes | None:
    if mode == DECODE_AND_MERGE_SLASHES and b"%" in path:
        # Before anything else, as Envoy does: a decoded `..%2F` is then a dot segment like any other. A
        # replacement yields one `/` or `\`, which cannot complete another match: the order is immaterial.
        path = path.replace(b"%2F", b"/").replace(b"%2f", b"/").replace(b"%5C", b"\\").replace(b"%5c", b"\\")
    if b"\\" in path:
        path = path.replace(b"\\", b"/")
    if b"%" in path:
        decoded = _decode_unreserved(path)
        if decoded is None:
            return None
        path = decoded
    if b"/." in path:
        resolved = _remove_dot_segments(path)
        if resolved is None:
            return None
        path = resolved
    if mode != BASE:
        while b"//" in path:
            path = path.replace(b"//", b"/")
    return path


def _decode_unreserved(path: bytes) -> bytes | None:
    """Decode escapes of unreserved characters; None for `%00`. See the module docstring for `%` alone."""
    pieces = path.split(b"%")
    out = [pieces[0]]
    length = len(pieces[0])  # of what `out` joins to: where the next `%` would land
    lone: list[int] = []  # positions in the output of `%`s that start no valid escape
    decoded_hex = False
    for index in range(1, len(pieces)):
        piece = pieces[index]
        if len(piece) >= 2:
            high = _HEX[piece[0]]
            low = _HEX[piece[1]]
            if high < 16 and low < 16:
                value = high * 16 + low
                if _UNRESERVED[value]:
                    out.append(_CHARS[value])
                    out.append(piece[2:])
                    length += len(piece) - 1
                    if _HEX[value] < 16:
                        decoded_hex = True
                    continue
                if value == 0:
                    return None
                out.append(b"%")
                out.append(piece)
                length += len(piece) + 1
                continue
        lone.append(length)
        out.append(b"%")
        out.append(piece)
        length += len(piece) + 1
    result = b"".join(out)
    if lone and decoded_hex:
        # Only a decoded hex digit can complete a lone `%` into an escape; escape such a `%` as `%25`.
        # From the right, so the positions still to check do not move.
        for position in reversed(lone):
            if (position + 2 < len(result) and _HEX[result[position + 1]] < 16
                    and _HEX[result[position + 2]] < 16):
                result = result[:position + 1] + b"25" + result[position + 1:]
    return result


def _remove_dot_segments(path: bytes) -> bytes | None:
    """RFC 3986 section 5.2.4 on an absolute path, by whole segments; None when `..` climbs above the root.

    A trailing `.` or `..` leaves a trailing `/` (`/a/b/..` is `/a/`); an empty segment (`//`) is a
    segment that `..` removes, as in Chromium.
    """
    segments = path.split(b"/")  # segments[0] is the empty string before the leading `/`
    out: list[bytes] = []
    last = len(segments) - 1
    for index in range(1, len(segments)):
        segment = segments[index]
        if segment == b".":
            if index == last:
                out.append(b"")
        elif segment == b"..":
            if not out:
                return None
            out.pop()
            if index == last:
                out.append(b"")
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def refusal(path: bytes) -> str:
    """Why `normalize_path` refused `path` (for the 400's details; not on the request path)."""
    if b"%00" in path:
        return "path encodes NUL (%00)"
    return "path climbs above the root"
