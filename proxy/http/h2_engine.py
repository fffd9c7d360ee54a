"""The HTTP/2 connection state machine both codecs drive (RFC 9113), sans I/O: bytes in, callbacks and bytes out.

Owns framing (reading frames out of what a socket delivered, writing frames into one outgoing buffer), the
connection preface, SETTINGS (ours sent, the peer's applied and acknowledged), PING answers, stream states
and ids, HEADERS + CONTINUATION assembly (bounded in bytes and in frames: the 2024 CONTINUATION flood),
HPACK (`proxy.http.hpack_decoder`, `proxy.http.hpack_encoder`), the well-formedness of every
field section (`proxy.http.h2_fields`), flow control both ways (the peer's windows bound what we send; ours
bound what the peer may send, enforced, and are given back in batches of half a window as the codec reports
bytes consumed), RST_STREAM and GOAWAY both ways. A GOAWAY, sent or received, stops new streams only:
streams under way go on until they end (a graceful drain).

Why our own and not the `h2` package: `h2` is general (every event an object, every field checked a second
time, an HPACK encoder with a dynamic table) and interpreted, and it was most of the CPU of an HTTP/2
request through the sidecar (issue 19's measurements); this one is compiled with mypyc and does what a
proxy needs. What the peer sends reaches the codec as `H2Events` calls, in frame order, during `receive`.

A connection error raises `H2Error` out of `receive` (its GOAWAY is queued already: the codec writes
`data_to_send()` and closes). A stream error resets that stream (RST_STREAM) and tells the codec through
`h2_reset(remote=False)` when the codec knows the stream. Sending on a stream that is gone is a no-op
(returns False): a reset can cross a write in flight. Must not do I/O, or know requests, routes or policy.
"""

from __future__ import annotations

import struct
from typing import Protocol

from proxy.http.h2_fields import request_problem, response_problem, trailers_problem
from proxy.http.hpack_decoder import HeaderDecoder, HpackError
from proxy.http.hpack_encoder import encode_fields
from proxy.message import Headers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA = 0
HEADERS = 1
PRIORITY = 2
RST_STREAM = 3
SETTINGS = 4
PUSH_PROMISE = 5
PING = 6
GOAWAY = 7
WINDOW_UPDATE = 8
CONTINUATION = 9
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (section 7).
NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
STREAM_CLOSED = 5
FRAME_SIZE_ERROR = 6
REFUSED_STREAM = 7
CANCEL = 8
COMPRESSION_ERROR = 9
ENHANCE_YOUR_CALM = 11
ERROR_NAMES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")

# SETTINGS identifiers (section 6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 1
SETTINGS_ENABLE_PUSH = 2
SETTINGS_MAX_CONCURRENT_STREAMS = 3
SETTINGS_INITIAL_WINDOW_SIZE = 4
SETTINGS_MAX_FRAME_SIZE = 5
SETTINGS_MAX_HEADER_LIST_SIZE = 6

DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_FRAME_SIZE = 16384  # ours, never raised: no frame we read is bigger
UNLIMITED_STREAMS = 2**31 - 1

# The protections a connection error may stand for (the codec counts them).
CONTINUATION_FLOOD = "continuation_flood"
HEADER_LIST_SIZE = "header_list_size"
STREAM_LIMIT = "stream_limit"
# CONTINUATION frames one header block may take: a block as big as the largest header list we accept needs
# max_header_list_size / 16 KiB of them; a flood sends thousands of tiny ones.
MIN_CONTINUATIONS = 8

_FRAME_HEADER = struct.Struct(">BHBBI")  # length (24 bits as 8 + 16), type, flags, stream id
_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")
_SETTING = struct.Struct(">HI")


def error_name(code: int) -> str:
    return ERROR_NAMES[code] if 0 <= code < len(ERROR_NAMES) else f"error {code}"


class H2Error(Exception):
    """A connection error (its GOAWAY is queued); `protection` names the attack it stands for, if one."""

    def __init__(self, code: int, message: str, protection: str = "") -> None:
        super().__init__(f"{error_name(code)}: {message}")
        self.code = code
        self.protection = protection


class H2Events(Protocol):
    """What a codec hears from the peer, in frame order, during `H2Engine.receive`."""

    def h2_headers(self, stream_id: int, fields: Headers, end: bool) -> None:
        """A request head (server) or final response head (client); `end`: no body follows."""

    def h2_trailers(self, stream_id: int, fields: Headers) -> None:
        """Trailers (`h2_end` follows)."""

    def h2_data(self, stream_id: int, data: bytes, flow: int) -> None:
        """Body bytes; `flow` is what they took of the windows (padding included), to `acknowledge`."""

    def h2_end(self, stream_id: int) -> None:
        """The peer's side of the stream ended (END_STREAM)."""

    def h2_reset(self, stream_id: int, code: int, remote: bool) -> None:
        """The stream is gone: reset by the peer (`remote`) or by us for something it sent."""

    def h2_window(self, stream_id: int) -> None:
        """More may be sent: on this stream, or on all of them (0: the connection window or initial window)."""

    def h2_settings(self) -> None:
        """A SETTINGS frame from the peer was applied (and acknowledged)."""

    def h2_ping(self) -> None:
        """A PING from the peer (answered already)."""

    def h2_goaway(self, last_stream_id: int, code: int) -> None:
        """The peer's GOAWAY: it opens or processes no stream above `last_stream_id`."""


class StreamState:
    """What the engine keeps per open stream."""

    __slots__ = ("ack_pending", "expected_length", "head_request", "heads", "local_closed", "received_length",
                 "remote_closed", "window_in", "window_out")

    def __init__(self, window_out: int, window_in: int) -> None:
        self.window_out = window_out  # what we may still send
        self.window_in = window_in  # what the peer may still send
        self.ack_pending = 0  # bytes consumed, not yet given back in a WINDOW_UPDATE
        self.local_closed = False
        self.remote_closed = False
        self.heads = 0  # header blocks received (a second one is trailers)
        self.expected_length = -1  # the declared content-length of what the peer sends (-1: none)
        self.received_length = 0
        self.head_request = False  # client side: a HEAD request's response has no body whatever its length


class H2Engine:
    """One HTTP/2 connection's protocol state; `client` picks the side."""

    def __init__(self, events: H2Events, client: bool, max_concurrent_streams: int, initial_window: int,
                 connection_window: int, max_header_list_size: int) -> None:
        self.events = events
        self.client = client
        self.streams: dict[int, StreamState] = {}
        self._out = bytearray()
        self._in = b""
        self._preface_pending = not client
        # A client's decoder allows twice the advertised size: an upstream's head a little over it fails that
        # one stream (the codec's check), not the connection every other stream shares.
        self._decoder = HeaderDecoder(max_header_list_size * (2 if client else 1))
        self.max_header_list_size = max_header_list_size
        self._max_continuations = max(MIN_CONTINUATIONS, max_header_list_size // DEFAULT_FRAME_SIZE + 2)
        # Ours: advertised in the first SETTINGS (max_concurrent_streams 0 = not advertised).
        self.local_max_streams = max_concurrent_streams
        self.local_initial_window = initial_window
        self._connection_window_target = connection_window
        # The peer's (its SETTINGS; the protocol's defaults until then).
        self.remote_max_streams = UNLIMITED_STREAMS
        self.remote_initial_window = DEFAULT_WINDOW
        self.remote_max_frame = DEFAULT_FRAME_SIZE
        # Connection windows: what we may send, what the peer may send, what is consumed and not given back.
        self.window_out = DEFAULT_WINDOW
        self.window_in = DEFAULT_WINDOW
        self._conn_ack_pending = 0
        # Stream ids: the highest the peer opened, the next we open (client).
        self.highest_remote = 0
        self._next_stream = 1
        # A header block in CONTINUATION frames: its stream, END_STREAM flag, bytes so far, frames so far.
        self._block_stream = 0
        self._block_end = False
        self._block = bytearray()
        self._block_frames = 0
        self.closed = False
        # Server side: requests reset as malformed as they opened (the codec counts them against its budget).
        self.malformed_streams = 0
        # Until the peer acknowledges our SETTINGS it may assume the default stream window (65535): a smaller
        # one of ours is enforced only from then on.
        self._stream_window_in = max(initial_window, DEFAULT_WINDOW)
        self._settings_acked = False
        # The peer's SETTINGS_HEADER_TABLE_SIZE arrived: our next header block starts with a table size update
        # (to 0: we never index), as RFC 7541 section 4.2 asks of an encoder whose limit changed.
        self._table_update_due = False

    # -- starting ----------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface (client), our SETTINGS and the connection window beyond the default."""
        out = self._out
        if self.client:
            out += PREFACE
        settings = [(SETTINGS_ENABLE_PUSH, 0), (SETTINGS_INITIAL_WINDOW_SIZE, self.local_initial_window),
                    (SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list_size)]
        if self.local_max_streams:
            settings.insert(0, (SETTINGS_MAX_CONCURRENT_STREAMS, self.local_max_streams))
        payload = b"".join([_SETTING.pack(key, value) for key, value in settings])
        self._frame(SETTINGS, 0, 0, payload)
        extra = self._connection_window_target - DEFAULT_WINDOW
        if extra > 0:
            self.window_in += extra
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(extra))

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    # -- reading -------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Read what arrived: whole frames are handled (calling `events`), a partial one waits for the rest."""
        if self.closed:
            return
        buffer = self._in + data if self._in else data
        if self._preface_pending:
            if len(buffer) < len(PREFACE):
                if not PREFACE.startswith(buffer):
                    self._connection_error(PROTOCOL_ERROR, "no HTTP/2 client preface")
                self._in = buffer
                return
            if buffer[:len(PREFACE)] != PREFACE:
                self._connection_error(PROTOCOL_ERROR, "no HTTP/2 client preface")
            self._preface_pending = False
            buffer = buffer[len(PREFACE):]
        offset = 0
        end = len(buffer)
        while end - offset >= 9 and not self.closed:
            high, low, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buffer, offset)
            length = (high << 16) | low
            if length > DEFAULT_FRAME_SIZE:
                self._connection_error(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            if end - offset - 9 < length:
                break
            start = offset + 9
            offset = start + length
            self._frame_received(kind, flags, stream_id & 0x7FFFFFFF, buffer[start:offset])
        self._in = buffer[offset:] if offset < end else b""

    def _frame_received(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block_stream and kind != CONTINUATION:
            self._connection_error(PROTOCOL_ERROR, "a frame inside a header block")
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            self._continuation(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == RST_STREAM:
            self._rst_stream(stream_id, payload)
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == PING:
            self._ping(flags, stream_id, payload)
        elif kind == GOAWAY:
            self._goaway(stream_id, payload)
        else:
            self._other_frame(kind, stream_id, payload)

    def _other_frame(self, kind: int, stream_id: int, payload: bytes) -> None:
        if kind == PRIORITY:
            if stream_id == 0 or len(payload) != 5:
                self._connection_error(PROTOCOL_ERROR, "a malformed PRIORITY frame")
        elif kind == PUSH_PROMISE:
            self._connection_error(PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")
        # other frame types are ignored (section 5.5)

    def _unpad(self, flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            self._connection_error(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1:len(payload) - payload[0]]

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._connection_error(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        self.window_in -= flow
        if self.window_in < 0:
            self._connection_error(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        data = self._unpad(flags, payload)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self._highest_known():
                self._connection_error(PROTOCOL_ERROR, "DATA on an idle stream")
            # A stream we reset or finished: its bytes only give the connection window back.
            self._acknowledge_connection(flow)
            if stream is not None:
                self._stream_error(stream_id, STREAM_CLOSED, True)
            return
        stream.window_in -= flow
        if stream.window_in < 0 or stream.heads == 0:
            # Past our window, or (an upstream's) body before its response head.
            self._acknowledge_connection(flow)
            self._stream_error(stream_id, FLOW_CONTROL_ERROR if stream.heads else PROTOCOL_ERROR, True)
            return
        if stream.expected_length >= 0:
            stream.received_length += len(data)
            if stream.received_length > stream.expected_length or (
                    flags & END_STREAM and stream.received_length != stream.expected_length):
                self._acknowledge_connection(flow)
                self._stream_error(stream_id, PROTOCOL_ERROR, True)
                return
        events = self.events
        if data or flow:
            events.h2_data(stream_id, data, flow)
        if flags & END_STREAM:
            self._remote_end(stream_id, stream)

    def _highest_known(self) -> int:
        return self._next_stream - 2 if self.client else self.highest_remote

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            self._connection_error(PROTOCOL_ERROR, "HEADERS on stream 0")
        block = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                self._connection_error(FRAME_SIZE_ERROR, "a HEADERS priority block cut short")
            block = block[5:]
        end = bool(flags & END_STREAM)
        if flags & END_HEADERS:
            self._header_block(stream_id, block, end)
            return
        self._block_stream = stream_id
        self._block_end = end
        self._block = bytearray(block)
        self._block_frames = 0

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id != self._block_stream:
            self._connection_error(PROTOCOL_ERROR, "CONTINUATION outside a header block")
        self._block_frames += 1
        self._block += payload
        if self._block_frames > self._max_continuations or len(self._block) > self.max_header_list_size * 2:
            self._connection_error(ENHANCE_YOUR_CALM, "a header block in too many CONTINUATION frames",
                                   CONTINUATION_FLOOD)
        if flags & END_HEADERS:
            block = bytes(self._block)
            self._block_stream = 0
            self._block = bytearray()
            self._header_block(stream_id, block, self._block_end)

    def _decode(self, block: bytes) -> Headers:
        try:
            return self._decoder.decode(block)
        except HpackError as exc:
            if exc.oversized:
                self._connection_error(ENHANCE_YOUR_CALM, "a header list over max_header_list_size",
                                       HEADER_LIST_SIZE)
            self._connection_error(COMPRESSION_ERROR, f"HPACK: {exc}")
            raise

    def _header_block(self, stream_id: int, block: bytes, end: bool) -> None:
        fields = self._decode(block)  # always: the decoder's table must follow the peer's encoder
        stream = self.streams.get(stream_id)
        if stream is None:
            if self.client:
                if stream_id >= self._next_stream or stream_id % 2 == 0:
                    self._connection_error(PROTOCOL_ERROR, "HEADERS on a stream we did not open")
                return  # a stream we reset: its response is dropped
            if stream_id % 2 and stream_id <= self.highest_remote:
                return  # a stream we reset or refused: what was in flight is ignored (RFC 9113 section 5.1)
            self._open_remote(stream_id, fields, end)
            return
        if stream.remote_closed:
            self._stream_error(stream_id, STREAM_CLOSED, True)
            return
        events = self.events
        if stream.heads == 0:
            if self.client and not self._response_head(stream_id, stream, fields, end):
                return
            stream.heads = 1
            events.h2_headers(stream_id, fields, end)
            if end:
                self._remote_end(stream_id, stream)
            return
        if not end or trailers_problem(fields) is not None:
            self._stream_error(stream_id, PROTOCOL_ERROR, True)
            return
        stream.heads = 2
        if stream.expected_length >= 0 and stream.received_length != stream.expected_length:
            self._stream_error(stream_id, PROTOCOL_ERROR, True)
            return
        events.h2_trailers(stream_id, fields)
        self._remote_end(stream_id, stream)

    def _response_head(self, stream_id: int, stream: StreamState, fields: Headers, end: bool) -> bool:
        """Whether a response's HEADERS are its final head (an informational one is skipped; a malformed one
        resets the stream); its declared length is what the DATA must add up to."""
        problem, length = response_problem(fields)
        if problem is not None:
            self._stream_error(stream_id, PROTOCOL_ERROR, True)
            return False
        status = fields[0][1]
        if status[:1] == b"1":
            if end:  # an informational response cannot end the stream
                self._stream_error(stream_id, PROTOCOL_ERROR, True)
            return False  # 100 Continue, 103 Early Hints: the final response follows
        if not stream.head_request and status != b"204" and status != b"304":
            stream.expected_length = length
            if end and length > 0:
                self._stream_error(stream_id, PROTOCOL_ERROR, True)
                return False
        return True

    def _open_remote(self, stream_id: int, fields: Headers, end: bool) -> None:
        """A client's new stream (server side)."""
        if stream_id % 2 == 0 or stream_id <= self.highest_remote:
            self._connection_error(STREAM_CLOSED if stream_id % 2 else PROTOCOL_ERROR,
                                   f"HEADERS on stream {stream_id}, closed or not the client's")
        self.highest_remote = stream_id
        problem, length = request_problem(fields)
        if problem is not None:
            self.malformed_streams += 1
            self._reset_frame(stream_id, PROTOCOL_ERROR)
            return
        if self.local_max_streams and len(self.streams) > self.local_max_streams * 2 + 100:
            # The codec refuses streams over the advertised limit at once; this many open means it cannot.
            self._connection_error(ENHANCE_YOUR_CALM, "too many open streams", STREAM_LIMIT)
        stream = StreamState(self.remote_initial_window, self._stream_window_in)
        stream.heads = 1
        stream.expected_length = length
        if end and length > 0:
            self.malformed_streams += 1
            self._reset_frame(stream_id, PROTOCOL_ERROR)
            return
        self.streams[stream_id] = stream
        self.events.h2_headers(stream_id, fields, end)
        if end:
            self._remote_end(stream_id, stream)

    def _remote_end(self, stream_id: int, stream: StreamState) -> None:
        stream.remote_closed = True
        self.events.h2_end(stream_id)
        if stream.local_closed:
            self.streams.pop(stream_id, None)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._connection_error(FRAME_SIZE_ERROR, "a WINDOW_UPDATE frame not of 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                self._connection_error(PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self.window_out += increment
            if self.window_out > MAX_WINDOW:
                self._connection_error(FLOW_CONTROL_ERROR, "the connection window over 2^31-1")
            self.events.h2_window(0)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._highest_known():
                self._connection_error(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._stream_error(stream_id, PROTOCOL_ERROR, True)
            return
        stream.window_out += increment
        if stream.window_out > MAX_WINDOW:
            self._stream_error(stream_id, FLOW_CONTROL_ERROR, True)
            return
        self.events.h2_window(stream_id)

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or len(payload) != 4:
            self._connection_error(PROTOCOL_ERROR if stream_id == 0 else FRAME_SIZE_ERROR,
                                   "a malformed RST_STREAM frame")
        if stream_id > self._highest_known():
            self._connection_error(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        # A stream both sides have ended is forgotten: its late reset is nothing to anyone.
        if self.streams.pop(stream_id, None) is not None:
            self.events.h2_reset(stream_id, _U32.unpack(payload)[0], True)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            self._connection_error(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                self._connection_error(FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            self._our_settings_acknowledged()
            return
        if len(payload) % 6:
            self._connection_error(FRAME_SIZE_ERROR, "a SETTINGS frame not a multiple of 6 bytes")
        delta = 0
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            delta += self._apply_setting(key, value)
        if delta:
            for stream in self.streams.values():
                stream.window_out += delta
                if stream.window_out > MAX_WINDOW:
                    self._connection_error(FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
        self._frame(SETTINGS, ACK, 0, b"")
        self.events.h2_settings()
        if delta:
            self.events.h2_window(0)

    def _apply_setting(self, key: int, value: int) -> int:
        """Take one of the peer's settings; what it changed the initial stream window by."""
        if key == SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                self._connection_error(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
            delta = value - self.remote_initial_window
            self.remote_initial_window = value
            return delta
        if key == SETTINGS_MAX_CONCURRENT_STREAMS:
            self.remote_max_streams = value
        elif key == SETTINGS_HEADER_TABLE_SIZE:
            self._table_update_due = True
        elif key == SETTINGS_MAX_FRAME_SIZE:
            if value < DEFAULT_FRAME_SIZE or value > 2**24 - 1:
                self._connection_error(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
            self.remote_max_frame = value
        elif key == SETTINGS_ENABLE_PUSH and value > 1:
            self._connection_error(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
        # MAX_HEADER_LIST_SIZE: advisory.
        return 0

    def _our_settings_acknowledged(self) -> None:
        """The peer applies our SETTINGS from now on: a stream window below the default is ours to enforce."""
        if self._settings_acked:
            return
        self._settings_acked = True
        delta = self.local_initial_window - self._stream_window_in
        self._stream_window_in = self.local_initial_window
        if delta:
            for stream in self.streams.values():
                stream.window_in += delta

    def _ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) != 8:
            self._connection_error(PROTOCOL_ERROR if stream_id else FRAME_SIZE_ERROR, "a malformed PING frame")
        if flags & ACK:
            return
        self._frame(PING, ACK, 0, payload)
        self.events.h2_ping()

    def _goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id != 0 or len(payload) < 8:
            self._connection_error(PROTOCOL_ERROR, "a malformed GOAWAY frame")
        last, code = _U32_PAIR.unpack_from(payload, 0)
        self.events.h2_goaway(last & 0x7FFFFFFF, code)

    # -- errors --------------------------------------------------------------------------------------

    def _connection_error(self, code: int, message: str, protection: str = "") -> None:
        """Queue GOAWAY(code), stop reading, raise `H2Error`."""
        if not self.closed:
            self.goaway(code)
            self.closed = True
        raise H2Error(code, message, protection)

    def _stream_error(self, stream_id: int, code: int, tell: bool) -> None:
        self._reset_frame(stream_id, code)
        if self.streams.pop(stream_id, None) is not None and tell:
            self.events.h2_reset(stream_id, code, False)

    # -- writing -------------------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)
        out = self._out
        out += _FRAME_HEADER.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)
        if length:
            out += payload

    def _reset_frame(self, stream_id: int, code: int) -> None:
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def next_stream_id(self) -> int:
        return self._next_stream

    def stream_ids_left(self) -> int:
        """How many more streams this (client) connection can open before its ids run out."""
        return (MAX_STREAM_ID - self._next_stream) // 2 + 1 if self._next_stream <= MAX_STREAM_ID else 0

    def send_headers(self, stream_id: int, fields: Headers, end: bool) -> bool:
        """A head or trailers; the client's first HEADERS on `next_stream_id()` opens that stream."""
        stream = self.streams.get(stream_id)
        if stream is None:
            if not self.client or stream_id != self._next_stream or self.closed or stream_id > MAX_STREAM_ID:
                return False
            stream = StreamState(self.remote_initial_window, self._stream_window_in)
            stream.head_request = fields[0] == (b":method", b"HEAD")
            self.streams[stream_id] = stream
            self._next_stream += 2
        elif stream.local_closed:
            return False
        block = encode_fields(fields)
        if self._table_update_due:
            self._table_update_due = False
            block = b"\x20" + block
        limit = self.remote_max_frame
        flags = END_STREAM if end else 0
        if len(block) <= limit:
            self._frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._frame(HEADERS, flags, stream_id, block[:limit])
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                self._frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start:start + limit])
        if end:
            self._local_end(stream_id, stream)
        return True

    def window(self, stream_id: int) -> int:
        """What may be sent on the stream now, in one frame (0: nothing, or the stream is gone)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return 0
        return min(stream.window_out, self.window_out, self.remote_max_frame)

    def send_data(self, stream_id: int, data: bytes, end: bool) -> bool:
        """DATA within `window(stream_id)` (the caller keeps to it)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return False
        size = len(data)
        stream.window_out -= size
        self.window_out -= size
        self._frame(DATA, END_STREAM if end else 0, stream_id, data)
        if end:
            self._local_end(stream_id, stream)
        return True

    def end_stream(self, stream_id: int) -> bool:
        return self.send_data(stream_id, b"", True)

    def _local_end(self, stream_id: int, stream: StreamState) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    def reset_stream(self, stream_id: int, code: int) -> bool:
        """RST_STREAM; False when the stream is gone already (nothing sent)."""
        if self.streams.pop(stream_id, None) is None or self.closed:
            return False
        self._reset_frame(stream_id, code)
        return True

    def acknowledge(self, stream_id: int, flow: int) -> None:
        """The codec consumed `flow` bytes of the stream: the windows get them back, half a window at a time."""
        if flow <= 0 or self.closed:
            return
        self._acknowledge_connection(flow)
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # the peer sends no more on it: its window does not matter
        pending = stream.ack_pending + flow
        if pending * 2 >= self.local_initial_window:
            stream.ack_pending = 0
            stream.window_in += pending
            self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(pending))
        else:
            stream.ack_pending = pending

    def _acknowledge_connection(self, flow: int) -> None:
        pending = self._conn_ack_pending + flow
        if pending * 2 >= self._connection_window_target:
            self._conn_ack_pending = 0
            self.window_in += pending
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(pending))
        else:
            self._conn_ack_pending = pending

    def ping(self, payload: bytes) -> None:
        self._frame(PING, 0, 0, payload)

    def goaway(self, code: int, last_stream_id: int = -1) -> None:
        """GOAWAY naming the last stream we processed (by default the peer's highest); streams under way go on."""
        last = self.highest_remote if last_stream_id < 0 else last_stream_id
        self._frame(GOAWAY, 0, 0, _U32_PAIR.pack(last, code))

    def stop(self) -> None:
        """The codec is closing the connection: nothing more is read (frames already queued still go out)."""
        self.closed = True

    @property
    def open_streams(self) -> int:
        return len(self.streams)
