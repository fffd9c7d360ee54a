"""The HTTP/2 engine (proxy.http.h2_engine) against an independent implementation: the `h2` package as its peer.

Bytes go back and forth in memory (sans I/O): our server engine under an `h2` client, our client engine under
an `h2` server, and hand-made frames (hyperframe) for what a well-behaved peer never sends.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, RstStreamFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.h2_engine import (
    CONTINUATION_FLOOD,
    HEADER_LIST_SIZE,
    PREFACE,
    PROTOCOL_ERROR,
    H2Engine,
    H2Error,
)
from proxy.http.hpack_encoder import encode_fields
from proxy.message import Headers

REQUEST: Headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/x"),
                    (b"content-type", b"application/grpc"), (b"te", b"trailers")]


class Recorder:
    """H2Events that writes down what it heard."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def h2_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        self.events.append(("headers", stream_id, [(bytes(n), bytes(v)) for n, v in fields], end))

    def h2_trailers(self, stream_id: int, fields: Headers) -> None:
        self.events.append(("trailers", stream_id, [(bytes(n), bytes(v)) for n, v in fields]))

    def h2_data(self, stream_id: int, data: bytes, flow: int) -> None:
        self.events.append(("data", stream_id, data, flow))

    def h2_end(self, stream_id: int) -> None:
        self.events.append(("end", stream_id))

    def h2_reset(self, stream_id: int, code: int, remote: bool) -> None:
        self.events.append(("reset", stream_id, code, remote))

    def h2_window(self, stream_id: int) -> None:
        self.events.append(("window", stream_id))

    def h2_settings(self) -> None:
        self.events.append(("settings",))

    def h2_ping(self) -> None:
        self.events.append(("ping",))

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        self.events.append(("goaway", last_stream_id, code))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == kind]


def server(max_streams: int = 100, window: int = 65535, header_list: int = 8192) -> tuple[H2Engine, Recorder]:
    recorder = Recorder()
    engine = H2Engine(recorder, False, max_streams, window, window * 4, header_list)
    engine.initiate()
    return engine, recorder


def h2_peer(client: bool) -> h2.connection.H2Connection:
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding=None))
    peer.initiate_connection()
    return peer


def exchange(engine: H2Engine, peer: h2.connection.H2Connection) -> list[h2.events.Event]:
    """Move bytes both ways until neither side has anything to say; the peer's events."""
    seen: list[h2.events.Event] = []
    for _ in range(20):
        to_engine = peer.data_to_send()
        if to_engine:
            engine.receive(to_engine)
        to_peer = engine.data_to_send()
        if to_peer:
            seen += peer.receive_data(to_peer)
        if not to_engine and not to_peer:
            return seen
    raise AssertionError("the two sides never went quiet")


def server_with_request(peer_settings: dict[int, int] | None = None,
                        ) -> tuple[H2Engine, Recorder, h2.connection.H2Connection]:
    """A server engine, an `h2` client peer (its `peer_settings` sent first) and stream 1's request, ended."""
    engine, heard = server()
    peer = h2_peer(client=True)
    if peer_settings:
        peer.update_settings(peer_settings)
    exchange(engine, peer)
    peer.send_headers(1, REQUEST, end_stream=True)
    exchange(engine, peer)
    return engine, heard, peer


def test_a_request_with_body_and_trailers_and_a_response_with_trailers() -> None:
    engine, heard = server()
    peer = h2_peer(client=True)
    exchange(engine, peer)
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"\x00\x00\x00\x00\x02hi")
    peer.send_headers(1, [(b"x-trailer", b"t")], end_stream=True)
    exchange(engine, peer)
    assert heard.of("headers") == [("headers", 1, REQUEST, False)]
    assert heard.of("data") == [("data", 1, b"\x00\x00\x00\x00\x02hi", 7)]
    assert heard.of("trailers") == [("trailers", 1, [(b"x-trailer", b"t")])]
    assert heard.events[-1] == ("end", 1)

    assert engine.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    assert engine.send_data(1, b"answer", False)
    assert engine.send_headers(1, [(b"grpc-status", b"0")], True)
    events = exchange(engine, peer)
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert response.headers[0] == (b":status", b"200")
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"answer"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert engine.open_streams == 0  # both sides ended: forgotten
    assert not engine.send_data(1, b"late", True)  # a stream that is gone takes nothing


def test_the_client_engine_under_an_h2_server() -> None:
    recorder = Recorder()
    engine = H2Engine(recorder, True, 0, 1 << 18, 1 << 22, 65536)
    engine.initiate()
    peer = h2_peer(client=False)
    peer.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 7})
    exchange(engine, peer)
    assert recorder.of("settings") and engine.remote_max_streams == 7
    stream_id = engine.next_stream_id()
    assert stream_id == 1 and engine.send_headers(stream_id, REQUEST, False)
    engine.send_data(stream_id, b"body", True)
    events = exchange(engine, peer)
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert request.headers == REQUEST
    assert engine.next_stream_id() == 3
    peer.send_headers(1, [(b":status", b"100")])  # informational: skipped
    peer.send_headers(1, [(b":status", b"200")])
    peer.send_data(1, b"ok")
    peer.send_headers(1, [(b"grpc-status", b"14"), (b"grpc-message", b"down")], end_stream=True)
    exchange(engine, peer)
    assert recorder.of("headers") == [("headers", 1, [(b":status", b"200")], False)]
    assert recorder.of("trailers") == [("trailers", 1, [(b"grpc-status", b"14"), (b"grpc-message", b"down")])]
    assert recorder.events[-1] == ("end", 1)


def test_sending_keeps_to_the_peers_windows_and_a_window_update_reopens_them() -> None:
    engine, heard, peer = server_with_request({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    engine.send_headers(1, [(b":status", b"200")], False)
    assert engine.window(1) == 1000
    engine.send_data(1, b"x" * 1000, False)
    assert engine.window(1) == 0
    peer.acknowledge_received_data(1000, 1)  # h2 gives the window back
    peer.increment_flow_control_window(500, stream_id=1)
    exchange(engine, peer)
    assert ("window", 1) in heard.events and engine.window(1) > 0


def test_windows_are_given_back_in_halves_and_not_for_a_stream_that_ended() -> None:
    engine, _ = server(window=1000)
    peer = h2_peer(client=True)
    exchange(engine, peer)
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"x" * 400)
    exchange(engine, peer)
    engine.acknowledge(1, 400)
    assert peer.receive_data(engine.data_to_send()) == []  # 400 < half the window: nothing yet
    peer.send_data(1, b"x" * 200)
    exchange(engine, peer)
    engine.acknowledge(1, 200)
    updates = [e for e in peer.receive_data(engine.data_to_send()) if isinstance(e, h2.events.WindowUpdated)]
    assert [(e.stream_id, e.delta) for e in updates] == [(1, 600)]
    assert peer.local_flow_control_window(1) == 1000


def test_a_peer_sending_past_our_window_gets_its_stream_reset() -> None:
    engine, heard = server(window=100)
    engine.receive(PREFACE + SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields(REQUEST)
    engine.receive(headers.serialize() + DataFrame(1, data=b"x" * 101).serialize())
    assert heard.of("reset") == [("reset", 1, 3, False)]  # FLOW_CONTROL_ERROR


def test_a_body_longer_than_its_content_length_is_a_stream_error() -> None:
    engine, heard = server()
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields([*REQUEST, (b"content-length", b"3")])
    engine.receive(headers.serialize() + DataFrame(1, data=b"four").serialize())
    assert heard.of("reset") == [("reset", 1, PROTOCOL_ERROR, False)]
    assert not heard.of("data")


@pytest.mark.parametrize("fields", [
    [(b":method", b"GET"), (b":path", b"/")],  # no :scheme
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"X-Upper", b"v")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"connection", b"close")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"te", b"gzip")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b"x", b"1"), (b":path", b"/")],  # pseudo after regular
    [(b":method", b"GET"), (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b"a\r\nb")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"x", b" padded")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":status", b"200")],
])
def test_malformed_requests_are_reset_and_never_reach_the_codec(fields: Headers) -> None:
    engine, heard = server()
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    headers.data = encode_fields(fields) if fields[-1][0] != b"X-Upper" else _raw_block(fields)
    engine.receive(headers.serialize())
    assert not heard.of("headers")
    resets = [f for f in frames(engine.data_to_send()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in resets] == [(1, ErrorCodes.PROTOCOL_ERROR)]
    # the connection goes on
    good = HeadersFrame(3, flags=["END_HEADERS", "END_STREAM"])
    good.data = encode_fields(REQUEST)
    engine.receive(good.serialize())
    assert heard.of("headers")[0][1] == 3


def frames(data: bytes) -> list[Frame]:
    """The frames in `data` (hyperframe's parsing, not ours)."""
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        found.append(frame)
        data = data[9 + length:]
    return found


def _raw_block(fields: Headers) -> bytes:
    """Literal fields as sent (our encoder lowercases names; a hostile peer does not)."""
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value
    return out


def test_a_continuation_flood_is_a_connection_error() -> None:
    engine, _ = server()
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1)
    headers.data = encode_fields(REQUEST)
    engine.receive(headers.serialize())
    with pytest.raises(H2Error) as raised:
        for _ in range(100):
            engine.receive(ContinuationFrame(1, data=b"\x40\x01a\x01b").serialize())
    assert raised.value.protection == CONTINUATION_FLOOD
    assert engine.closed


def test_a_header_list_over_the_limit_is_a_connection_error() -> None:
    engine, _ = server(header_list=1024)
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    headers.data = encode_fields([*REQUEST, (b"x-big", b"v" * 2000)])
    with pytest.raises(H2Error) as raised:
        engine.receive(headers.serialize())
    assert raised.value.protection == HEADER_LIST_SIZE


def test_a_peer_reset_reaches_the_codec_and_late_frames_only_return_the_window() -> None:
    engine, heard = server()
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields(REQUEST)
    engine.receive(headers.serialize() + RstStreamFrame(1, error_code=8).serialize())
    assert heard.of("reset") == [("reset", 1, 8, True)]
    engine.receive(DataFrame(1, data=b"late").serialize())
    assert not heard.of("data")


def test_a_received_goaway_stops_nothing_under_way() -> None:
    engine, heard, peer = server_with_request()
    peer.close_connection(last_stream_id=0)
    exchange(engine, peer)
    assert heard.of("goaway") == [("goaway", 0, 0)]
    assert engine.send_headers(1, [(b":status", b"204")], True)  # the answer still goes out


def test_a_changed_initial_window_moves_open_streams_windows() -> None:
    engine, _, peer = server_with_request()
    assert engine.window(1) == 16384  # the frame size bounds it
    peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    exchange(engine, peer)
    assert engine.window(1) == 100


def client_engine() -> tuple[H2Engine, Recorder, h2.connection.H2Connection]:
    recorder = Recorder()
    engine = H2Engine(recorder, True, 0, 1 << 18, 1 << 22, 65536)
    engine.initiate()
    peer = h2_peer(client=False)
    exchange(engine, peer)
    return engine, recorder, peer


def test_an_upstream_body_before_its_head_resets_the_stream() -> None:
    engine, heard, peer = client_engine()
    engine.send_headers(1, REQUEST, True)
    exchange(engine, peer)
    engine.receive(DataFrame(1, data=b"hello", flags=["END_STREAM"]).serialize())
    assert heard.of("reset") == [("reset", 1, PROTOCOL_ERROR, False)]
    assert not heard.of("data") and not heard.of("end")


def test_an_informational_response_cannot_end_the_stream() -> None:
    engine, heard, peer = client_engine()
    engine.send_headers(1, REQUEST, True)
    exchange(engine, peer)
    peer.send_headers(1, [(b":status", b"100")])
    exchange(engine, peer)
    assert not heard.of("reset")  # skipped: the final response follows
    headers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    headers.data = encode_fields([(b":status", b"103")])
    engine.receive(headers.serialize())
    assert heard.of("reset") == [("reset", 1, PROTOCOL_ERROR, False)]


def test_a_response_body_must_match_its_content_length_except_for_head() -> None:
    engine, heard, peer = client_engine()
    engine.send_headers(1, REQUEST, True)
    engine.send_headers(3, [(b":method", b"HEAD"), (b":scheme", b"http"), (b":authority", b"svc"),
                            (b":path", b"/")], True)
    exchange(engine, peer)
    peer.send_headers(1, [(b":status", b"200"), (b"content-length", b"3")])
    peer.send_headers(3, [(b":status", b"200"), (b"content-length", b"3")], end_stream=True)
    exchange(engine, peer)
    engine.receive(DataFrame(1, data=b"four").serialize())
    assert heard.of("reset") == [("reset", 1, PROTOCOL_ERROR, False)]
    assert ("end", 3) in heard.events  # the HEAD response declares a length and has no body


def test_a_bad_content_length_from_an_upstream_resets_only_its_stream() -> None:
    engine, heard, peer = client_engine()
    engine.send_headers(1, REQUEST, True)
    exchange(engine, peer)
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields([(b":status", b"200"), (b"content-length", b"1_0")])
    engine.receive(headers.serialize())
    assert heard.of("reset") == [("reset", 1, PROTOCOL_ERROR, False)] and not heard.of("headers")


def test_frames_in_flight_for_a_stream_we_reset_are_ignored() -> None:
    engine, heard = server()
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields(REQUEST)
    engine.receive(headers.serialize())
    assert engine.reset_stream(1, 0)  # answered early: the rest of the request is not wanted
    trailers = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    trailers.data = encode_fields([(b"x-trailer", b"t")])
    engine.receive(DataFrame(1, data=b"late").serialize() + trailers.serialize())
    assert not engine.closed and not heard.of("trailers")


def test_a_peer_table_size_setting_gets_a_size_update_in_our_next_block() -> None:
    engine, _, peer = server_with_request({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    engine.send_headers(1, [(b":status", b"200")], True)
    raw = engine.data_to_send()
    headers = next(f for f in frames(raw) if isinstance(f, HeadersFrame))
    assert headers.data[:1] == b"\x20"  # dynamic table size update to 0
    events = peer.receive_data(raw)  # and h2 (like nghttp2) takes the block
    assert any(isinstance(e, h2.events.ResponseReceived) for e in events)


def test_a_small_stream_window_is_enforced_only_once_our_settings_are_acknowledged() -> None:
    engine, heard = server(window=1000)
    engine.receive(PREFACE + SettingsFrame(0).serialize())
    headers = HeadersFrame(1, flags=["END_HEADERS"])
    headers.data = encode_fields(REQUEST)
    engine.receive(headers.serialize() + DataFrame(1, data=b"x" * 5000).serialize())
    assert not heard.of("reset")  # the client may still assume 65535
    engine.receive(SettingsFrame(0, flags=["ACK"]).serialize())
    engine.receive(DataFrame(1, data=b"x" * 10).serialize())
    assert heard.of("reset") == [("reset", 1, 3, False)]  # 5,000 already past 1,000: FLOW_CONTROL_ERROR


def test_client_stream_ids_run_out_at_two_to_the_31() -> None:
    engine, _, _ = client_engine()
    engine._next_stream = 2**31 - 1
    assert engine.stream_ids_left() == 1
    assert engine.send_headers(2**31 - 1, REQUEST, True)
    assert engine.stream_ids_left() == 0
    assert not engine.send_headers(engine.next_stream_id(), REQUEST, True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_any_bytes_give_events_or_an_h2_error_and_nothing_else(garbage: bytes, split: int) -> None:
    engine, _ = server()
    engine.receive(PREFACE)
    try:
        for start in range(0, len(garbage), split):
            engine.receive(garbage[start:start + split])
    except H2Error:
        assert engine.closed
