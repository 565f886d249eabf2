"""SPDY/3.1 frames: their in-memory form, and a codec that owns the header compression.

A frame starts with 8 bytes. Control frames: the control bit, version (15 bits, 3), type (16
bits), flags (8 bits), payload length (24 bits). Data frames: a clear control bit, stream id
(31 bits), flags, length. All integers are big-endian. Header blocks (SYN_STREAM, SYN_REPLY,
HEADERS) are a count and length-prefixed name/value pairs, deflated with the SPDY/3 dictionary
in one zlib stream per direction, each block ending in a sync flush.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

from cryopod.errors import SpdyProtocolError
from cryopod.streaming.spdy.dictionary import SPDY3_DICTIONARY

SPDY_VERSION = 3
FRAME_HEADER_SIZE = 8
MAX_FRAME_PAYLOAD = 0xFFFFFF
MAX_HEADER_BLOCK = 256 * 1024
STREAM_ID_MASK = 0x7FFFFFFF

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

Headers = tuple[tuple[str, str], ...]
"""Header names (lowercase) and values in wire order; a value may hold NUL-separated values."""


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(IntEnum):
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    fin: bool = False


@dataclass(frozen=True)
class SynStreamFrame:
    stream_id: int
    headers: Headers = ()
    associated_to: int = 0
    priority: int = 0
    slot: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True)
class SynReplyFrame:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class RstStreamFrame:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True)
class SettingsFrame:
    settings: tuple[Setting, ...] = ()
    clear: bool = False


@dataclass(frozen=True)
class PingFrame:
    ping_id: int


@dataclass(frozen=True)
class GoAwayFrame:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class WindowUpdateFrame:
    stream_id: int
    delta: int


Frame = (
    DataFrame
    | SynStreamFrame
    | SynReplyFrame
    | RstStreamFrame
    | SettingsFrame
    | PingFrame
    | GoAwayFrame
    | HeadersFrame
    | WindowUpdateFrame
)


def header_value(headers: Headers, name: str) -> str:
    """The first value of header `name` (case-insensitive), or ""."""
    wanted = name.lower()
    for key, value in headers:
        if key == wanted:
            return value.split("\0", 1)[0]
    return ""


# ----------------------------------------------------------------------------- header blocks


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed block: a pair count, then length-prefixed lowercase names and values."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers:
        raw_name, raw_value = name.lower().encode(), value.encode()
        parts += [struct.pack(">I", len(raw_name)), raw_name]
        parts += [struct.pack(">I", len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(block: bytes) -> Headers:
    """Parse an uncompressed block; raises `SpdyProtocolError` if it is cut short."""
    if not block:
        return ()
    reader = _BlockReader(block)
    count = reader.u32()
    pairs = []
    for _ in range(count):
        name = reader.string().lower()
        pairs.append((name, reader.string()))
    return tuple(pairs)


class _BlockReader:
    def __init__(self, block: bytes) -> None:
        self._block = block
        self._offset = 0

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def string(self) -> str:
        return self._take(self.u32()).decode("utf-8", "replace")

    def _take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._block):
            raise SpdyProtocolError("header block is truncated")
        chunk = self._block[self._offset : end]
        self._offset = end
        return chunk


class HeaderCompressor:
    """One direction's deflate stream for header blocks."""

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zdict=SPDY3_DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._zlib.compress(block) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """One direction's inflate stream for header blocks, with a cap on the inflated size."""

    def __init__(self, *, max_size: int = MAX_HEADER_BLOCK) -> None:
        self._zlib = zlib.decompressobj(zdict=SPDY3_DICTIONARY)
        self._max_size = max_size

    def decompress(self, data: bytes) -> Headers:
        try:
            block = self._zlib.decompress(data, self._max_size + 1)
        except zlib.error as exc:
            raise SpdyProtocolError(f"cannot inflate header block: {exc}") from exc
        if len(block) > self._max_size or self._zlib.unconsumed_tail:
            raise SpdyProtocolError(f"header block larger than {self._max_size} bytes")
        return decode_header_block(block)


# ----------------------------------------------------------------------------- encoding


def _control(frame_type: FrameType, flags: int, payload: bytes) -> bytes:
    header = struct.pack(">HHI", 0x8000 | SPDY_VERSION, frame_type, flags << 24 | len(payload))
    return header + payload


class FrameEncoder:
    """Serializes frames; owns the sending direction's header compressor."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, frame: Frame) -> bytes:
        match frame:
            case DataFrame():
                return self._data(frame)
            case SynStreamFrame():
                return self._syn_stream(frame)
            case SynReplyFrame() | HeadersFrame():
                return self._stream_headers(frame)
            case _:
                return _encode_fixed(frame)

    @staticmethod
    def _data(frame: DataFrame) -> bytes:
        if len(frame.data) > MAX_FRAME_PAYLOAD:
            raise ValueError(f"data frame of {len(frame.data)} bytes is too large")
        flags = FLAG_FIN if frame.fin else 0
        header = struct.pack(">II", frame.stream_id & STREAM_ID_MASK, flags << 24 | len(frame.data))
        return header + frame.data

    def _syn_stream(self, frame: SynStreamFrame) -> bytes:
        flags = (FLAG_FIN if frame.fin else 0) | (
            FLAG_UNIDIRECTIONAL if frame.unidirectional else 0
        )
        fixed = struct.pack(
            ">IIBB",
            frame.stream_id & STREAM_ID_MASK,
            frame.associated_to & STREAM_ID_MASK,
            (frame.priority & 0x7) << 5,
            frame.slot,
        )
        payload = fixed + self._headers.compress(frame.headers)
        return _control(FrameType.SYN_STREAM, flags, payload)

    def _stream_headers(self, frame: SynReplyFrame | HeadersFrame) -> bytes:
        frame_type = FrameType.SYN_REPLY if isinstance(frame, SynReplyFrame) else FrameType.HEADERS
        payload = struct.pack(">I", frame.stream_id & STREAM_ID_MASK)
        payload += self._headers.compress(frame.headers)
        return _control(frame_type, FLAG_FIN if frame.fin else 0, payload)


def _encode_fixed(frame: Frame) -> bytes:
    """Control frames without a header block."""
    match frame:
        case RstStreamFrame():
            payload = struct.pack(">II", frame.stream_id & STREAM_ID_MASK, frame.status)
            return _control(FrameType.RST_STREAM, 0, payload)
        case SettingsFrame():
            entries = b"".join(
                struct.pack(">II", s.flags << 24 | (s.id & 0xFFFFFF), s.value)
                for s in frame.settings
            )
            payload = struct.pack(">I", len(frame.settings)) + entries
            return _control(FrameType.SETTINGS, FLAG_SETTINGS_CLEAR if frame.clear else 0, payload)
        case PingFrame():
            return _control(FrameType.PING, 0, struct.pack(">I", frame.ping_id))
        case GoAwayFrame():
            payload = struct.pack(">II", frame.last_good_stream_id & STREAM_ID_MASK, frame.status)
            return _control(FrameType.GOAWAY, 0, payload)
        case WindowUpdateFrame():
            payload = struct.pack(">II", frame.stream_id & STREAM_ID_MASK, frame.delta & 0x7FFFFFFF)
            return _control(FrameType.WINDOW_UPDATE, 0, payload)
    raise TypeError(f"not a SPDY frame: {frame!r}")


# ----------------------------------------------------------------------------- decoding


class FrameDecoder:
    """Parses frames out of a byte stream fed in arbitrary pieces.

    Owns the receiving direction's header decompressor, so every header block is inflated in
    order even for frames the session then ignores. Unknown control frame types are skipped,
    as the spec asks; anything malformed raises `SpdyProtocolError`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._headers = HeaderDecompressor()

    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by `data`, in order."""
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= FRAME_HEADER_SIZE:
            length = int.from_bytes(self._buffer[5:8], "big")
            end = FRAME_HEADER_SIZE + length
            if len(self._buffer) < end:
                break
            head = bytes(self._buffer[:FRAME_HEADER_SIZE])
            payload = bytes(self._buffer[FRAME_HEADER_SIZE:end])
            del self._buffer[:end]
            frame = self._decode(head, payload)
            if frame is not None:
                frames.append(frame)
        return frames

    def _decode(self, head: bytes, payload: bytes) -> Frame | None:
        first, second, flags_length = struct.unpack(">HHI", head)
        flags = flags_length >> 24
        if not first & 0x8000:
            stream_id = (first << 16 | second) & STREAM_ID_MASK
            if stream_id == 0:
                raise SpdyProtocolError("data frame on stream 0")
            return DataFrame(stream_id, payload, fin=bool(flags & FLAG_FIN))
        version = first & 0x7FFF
        if version != SPDY_VERSION:
            raise SpdyProtocolError(f"unsupported SPDY version {version}")
        return self._control(second, flags, payload)

    def _control(self, frame_type: int, flags: int, payload: bytes) -> Frame | None:
        fin = bool(flags & FLAG_FIN)
        if frame_type == FrameType.SYN_STREAM:
            _need(payload, 10, "SYN_STREAM")
            stream_id, associated, priority, slot = struct.unpack(">IIBB", payload[:10])
            return SynStreamFrame(
                stream_id & STREAM_ID_MASK,
                self._headers.decompress(payload[10:]),
                associated_to=associated & STREAM_ID_MASK,
                priority=priority >> 5,
                slot=slot,
                fin=fin,
                unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if frame_type in (FrameType.SYN_REPLY, FrameType.HEADERS):
            _need(payload, 4, FrameType(frame_type).name)
            stream_id = int.from_bytes(payload[:4], "big") & STREAM_ID_MASK
            headers = self._headers.decompress(payload[4:])
            if frame_type == FrameType.SYN_REPLY:
                return SynReplyFrame(stream_id, headers, fin=fin)
            return HeadersFrame(stream_id, headers, fin=fin)
        return _decode_fixed(frame_type, flags, payload)


def _need(payload: bytes, size: int, what: str, *, exact: bool = False) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        raise SpdyProtocolError(f"{what} frame of {len(payload)} bytes is malformed")


def _decode_fixed(frame_type: int, flags: int, payload: bytes) -> Frame | None:
    """Control frames without a header block; None for types SPDY/3.1 peers may ignore."""
    if frame_type == FrameType.RST_STREAM:
        _need(payload, 8, "RST_STREAM", exact=True)
        stream_id, status = struct.unpack(">II", payload)
        return RstStreamFrame(stream_id & STREAM_ID_MASK, status)
    if frame_type == FrameType.SETTINGS:
        return _decode_settings(flags, payload)
    if frame_type == FrameType.PING:
        _need(payload, 4, "PING", exact=True)
        return PingFrame(int.from_bytes(payload, "big"))
    if frame_type == FrameType.GOAWAY:
        _need(payload, 4, "GOAWAY")
        last_good = int.from_bytes(payload[:4], "big") & STREAM_ID_MASK
        status = int.from_bytes(payload[4:8], "big") if len(payload) >= 8 else GoAwayStatus.OK
        return GoAwayFrame(last_good, status)
    if frame_type == FrameType.WINDOW_UPDATE:
        _need(payload, 8, "WINDOW_UPDATE", exact=True)
        stream_id, delta = struct.unpack(">II", payload)
        return WindowUpdateFrame(stream_id & STREAM_ID_MASK, delta & 0x7FFFFFFF)
    return None


def _decode_settings(flags: int, payload: bytes) -> SettingsFrame:
    _need(payload, 4, "SETTINGS")
    count = int.from_bytes(payload[:4], "big")
    _need(payload, 4 + 8 * count, "SETTINGS", exact=True)
    settings = []
    for offset in range(4, 4 + 8 * count, 8):
        flag_id, value = struct.unpack(">II", payload[offset : offset + 8])
        settings.append(Setting(flag_id & 0xFFFFFF, value, flags=flag_id >> 24))
    return SettingsFrame(tuple(settings), clear=bool(flags & FLAG_SETTINGS_CLEAR))
