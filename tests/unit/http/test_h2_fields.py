"""Well-formed HTTP/2 field sections (proxy.http.h2_fields): what passes, and what each refusal names."""

from __future__ import annotations

from proxy.http.h2_fields import request_problem, response_problem, trailers_problem

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"svc"), (b":path", b"/")]


def test_a_plain_request_passes_with_its_content_length() -> None:
    assert request_problem(GET) == (None, -1)
    assert request_problem([*GET, (b"content-length", b"12"), (b"content-length", b"12")]) == (None, 12)


def test_connect_has_only_an_authority() -> None:
    assert request_problem([(b":method", b"CONNECT"), (b":authority", b"db:5432")]) == (None, -1)
    assert request_problem([(b":method", b"CONNECT"), (b":authority", b"db"), (b":path", b"/")])[0]
    assert request_problem([(b":method", b"GET"), (b":authority", b"svc")])[0] == "no :scheme or :path"


def test_each_refusal_says_what_is_wrong() -> None:
    assert "not a lowercase token" in str(request_problem([*GET, (b"X-Up", b"v")])[0])
    assert "connection-specific" in str(request_problem([*GET, (b"keep-alive", b"5")])[0])
    assert "te other than trailers" in str(request_problem([*GET, (b"te", b"deflate")])[0])
    assert "forbidden byte" in str(request_problem([*GET, (b"x", b"a\x00b")])[0])
    assert "content-length" in str(request_problem([*GET, (b"content-length", b"1"), (b"content-length", b"2")])[0])
    assert "misplaced" in str(request_problem([(b"x", b"1"), *GET])[0])
    assert request_problem([(b":scheme", b"http"), (b":path", b"/")])[0] == "no :method"


def test_pseudo_header_values_cannot_reshape_an_http1_request_line() -> None:
    def problem(name: bytes, value: bytes) -> str | None:
        fields = [(n, value if n == name else v) for n, v in GET]
        return request_problem(fields)[0]

    assert problem(b":method", b"GET /admin HTTP/1.1") is not None
    assert problem(b":path", b"/public HTTP/1.1\r\nx: y") is not None
    assert problem(b":path", b"/caf\xc3\xa9") is not None  # raw non-ASCII (percent-encode it)
    assert problem(b":path", b"relative") is not None
    assert problem(b":authority", b"svc evil") is not None
    assert problem(b":method", b"PROPFIND") is None
    assert request_problem([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*")])[0] is None


def test_responses_and_trailers() -> None:
    assert response_problem([(b":status", b"200"), (b"grpc-status", b"0")]) == (None, -1)
    assert response_problem([(b":status", b"200"), (b"content-length", b"12")]) == (None, 12)
    assert response_problem([(b":status", b"200"), (b"content-length", b"1_0")])[0] is not None
    assert response_problem([(b"content-type", b"text/plain")]) == ("no :status", -1)
    assert response_problem([(b":status", b"2000")])[0] is not None
    assert response_problem([(b":status", b"200"), (b":status", b"204")])[0] is not None
    assert trailers_problem([(b"grpc-status", b"0"), (b"grpc-message", b"ok")]) is None
    assert trailers_problem([(b":status", b"200")]) == "pseudo-header field in trailers"
