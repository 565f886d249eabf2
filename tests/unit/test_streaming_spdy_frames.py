"""SPDY/3.1 framing and header compression, checked against frames other implementations made."""

from __future__ import annotations

import struct
import zlib

import pytest

from cryopod.errors import SpdyProtocolError
from cryopod.streaming.spdy.dictionary import SPDY3_DICTIONARY
from cryopod.streaming.spdy.frames import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
    HeaderCompressor,
    HeaderDecompressor,
    HeadersFrame,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    Setting,
    SettingId,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    decode_header_block,
    encode_header_block,
    header_value,
)

# A SYN_STREAM (:method GET, :path /) and an empty SYN_REPLY as node-spdy's parser tests
# carry them: compressed by another SPDY implementation with the SPDY/3 dictionary.
NODE_SPDY_SYN_STREAM = bytes.fromhex(
    "800300010000002c0000000100000000000078f9e3c6a7c202e50e507ab442a45a77d7105006"
    "b32a4804974d8cfa00000000ffff"
)
NODE_SPDY_SYN_REPLY = bytes.fromhex("80030002000000140000000178f9e3c6a7c202a6230600000000ffff")
NODE_SPDY_DATA_FIN = bytes.fromhex("000000010100001157726974696e6720746f2073747265616d")


def roundtrip(*frames: Frame) -> list[Frame]:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    return decoder.feed(b"".join(encoder.encode(frame) for frame in frames))


def test_dictionary_is_the_specs() -> None:
    assert len(SPDY3_DICTIONARY) == 1423
    assert zlib.adler32(SPDY3_DICTIONARY) == 0xE3C6A7C2  # the DICTID zlib streams name
    assert SPDY3_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert SPDY3_DICTIONARY.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


def test_decodes_frames_made_by_another_implementation() -> None:
    syn_stream, data = FrameDecoder().feed(NODE_SPDY_SYN_STREAM + NODE_SPDY_DATA_FIN)
    assert isinstance(syn_stream, SynStreamFrame)
    assert syn_stream.stream_id == 1 and not syn_stream.fin
    assert syn_stream.headers == ((":method", "GET"), (":path", "/"))
    assert data == DataFrame(1, b"Writing to stream", fin=True)


def test_decodes_an_empty_header_block_from_another_implementation() -> None:
    (reply,) = FrameDecoder().feed(NODE_SPDY_SYN_REPLY)
    assert reply == SynReplyFrame(1, ())


@pytest.mark.parametrize(
    "frame",
    [
        DataFrame(5, b"payload"),
        DataFrame(7, b"", fin=True),
        SynStreamFrame(3, (("streamtype", "stdin"),), associated_to=1, priority=5, slot=2),
        SynStreamFrame(9, (("port", "80"),), fin=True, unidirectional=True),
        SynReplyFrame(3, (("a", "b\0c"),), fin=True),
        HeadersFrame(3, (("x", "y"),)),
        RstStreamFrame(3, RstStatus.REFUSED_STREAM),
        SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 1 << 20, flags=1),), clear=True),
        SettingsFrame(),
        PingFrame(0xFFFFFFFF),
        GoAwayFrame(41, GoAwayStatus.PROTOCOL_ERROR),
        WindowUpdateFrame(0, 0x7FFFFFFF),
    ],
)
def test_every_frame_roundtrips(frame: Frame) -> None:
    assert roundtrip(frame) == [frame]


def test_control_frame_layout() -> None:
    wire = FrameEncoder().encode(RstStreamFrame(3, RstStatus.CANCEL))
    assert wire == struct.pack(">HHIII", 0x8003, 3, 8, 3, 5)
    wire = FrameEncoder().encode(WindowUpdateFrame(1, 65536))
    assert wire == struct.pack(">HHIII", 0x8003, 9, 8, 1, 65536)


def test_data_frame_layout() -> None:
    assert FrameEncoder().encode(DataFrame(3, b"hi", fin=True)) == bytes.fromhex(
        "00000003" "01000002"
    ) + b"hi"  # fmt: skip


def test_header_blocks_share_one_zlib_stream_per_direction() -> None:
    encoder, decoder = FrameEncoder(), FrameDecoder()
    frames: list[Frame] = [
        SynStreamFrame(2 * i + 1, (("streamtype", kind),))
        for i, kind in enumerate(["error", "stdin", "stdout", "stderr", "resize"])
    ]
    wires = [encoder.encode(frame) for frame in frames]
    assert len(wires[3]) < len(wires[0])  # later blocks reuse the stream's history

    # A fresh decoder can only read them in order, from the first.
    assert FrameDecoder().feed(b"".join(wires)) == frames
    with pytest.raises(SpdyProtocolError):
        FrameDecoder().feed(wires[1])
    assert decoder.feed(wires[0]) == frames[:1]


def test_compressed_block_is_plain_zlib_with_the_dictionary() -> None:
    compressed = HeaderCompressor().compress((("streamtype", "data"), ("port", "8080")))
    block = zlib.decompressobj(zdict=SPDY3_DICTIONARY).decompress(compressed)
    assert block == (
        struct.pack(">I", 2)
        + struct.pack(">I", 10) + b"streamtype" + struct.pack(">I", 4) + b"data"
        + struct.pack(">I", 4) + b"port" + struct.pack(">I", 4) + b"8080"
    )  # fmt: skip


def test_reads_blocks_compressed_by_plain_zlib() -> None:
    deflate = zlib.compressobj(zdict=SPDY3_DICTIONARY)
    decompressor = HeaderDecompressor()
    for headers in [(("streamtype", "error"),), (("streamtype", "stdout"), ("x", ""))]:
        block = encode_header_block(headers)
        wire = deflate.compress(block) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert decompressor.decompress(wire) == headers


def test_header_names_are_lowercased_and_looked_up_case_insensitively() -> None:
    headers = decode_header_block(encode_header_block((("StreamType", "stdin"),)))
    assert headers == (("streamtype", "stdin"),)
    assert header_value(headers, "streamType") == "stdin"
    assert header_value((("port", "80\x0081"),), "port") == "80"
    assert header_value(headers, "missing") == ""


def test_decoder_takes_bytes_in_any_pieces() -> None:
    frames: list[Frame] = [
        SynStreamFrame(1, (("streamtype", "stdout"),)),
        DataFrame(1, b"x" * 1000),
        PingFrame(1),
    ]
    encoder = FrameEncoder()
    wire = b"".join(encoder.encode(frame) for frame in frames)
    decoder = FrameDecoder()
    decoded = [frame for i in range(len(wire)) for frame in decoder.feed(wire[i : i + 1])]
    assert decoded == frames


def test_unknown_control_frames_are_skipped() -> None:
    noop = struct.pack(">HHI", 0x8003, 5, 0)
    credential = struct.pack(">HHI", 0x8003, 10, 3) + b"abc"
    ping = FrameEncoder().encode(PingFrame(3))
    assert FrameDecoder().feed(noop + credential + ping) == [PingFrame(3)]


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (struct.pack(">II", 0, 1) + b"x", "stream 0"),
        (struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1", "version 2"),
        (struct.pack(">HHI", 0x8003, 3, 4) + b"\0\0\0\1", "RST_STREAM"),
        (struct.pack(">HHI", 0x8003, 4, 8) + struct.pack(">II", 2, 0), "SETTINGS"),
        (struct.pack(">HHI", 0x8003, 1, 6) + bytes(6), "SYN_STREAM too short"),
        (struct.pack(">HHI", 0x8003, 2, 8) + struct.pack(">I", 1) + b"junk", "inflate"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, reason: str) -> None:
    """Each case: `reason` names what is wrong with `wire`."""
    with pytest.raises(SpdyProtocolError):
        FrameDecoder().feed(wire)


def test_header_block_size_is_capped() -> None:
    huge = (("x", "y" * 100_000),)
    wire = HeaderCompressor().compress(huge)
    with pytest.raises(SpdyProtocolError, match="larger than"):
        HeaderDecompressor(max_size=50_000).decompress(wire)


def test_truncated_header_block_is_an_error() -> None:
    block = encode_header_block((("streamtype", "data"),))
    with pytest.raises(SpdyProtocolError, match="truncated"):
        decode_header_block(block[:-2])
