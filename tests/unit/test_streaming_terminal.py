"""Resize events: the JSON stream decoder and the latest-size iterator."""

from __future__ import annotations

import asyncio

from cryopod.streaming.backend import TerminalSize
from cryopod.streaming.terminal import ResizeDecoder, ResizeEvents, closed_resize_events


def test_objects_split_across_frames_and_packed_together() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":80,') == []
    assert decoder.feed(b'"Height":24}\n{"Width":100,"Height":30}{"Wid') == [
        TerminalSize(80, 24),
        TerminalSize(100, 30),
    ]
    assert decoder.feed(b'th":1,"Height":2}') == [TerminalSize(1, 2)]


def test_field_names_match_case_insensitively_as_in_go() -> None:
    assert ResizeDecoder().feed(b'{"width":5,"HEIGHT":6}') == [TerminalSize(5, 6)]
    assert ResizeDecoder().feed(b'{"Width":5}') == [TerminalSize(5, 0)]


def test_multibyte_text_split_across_frames() -> None:
    decoder = ResizeDecoder()
    raw = '{"Width":1,"Height":2,"note":"é"}'.encode()
    split = raw.index(b"\xa9")
    assert decoder.feed(raw[:split]) == []
    assert decoder.feed(raw[split:]) == [TerminalSize(1, 2)]


def test_values_out_of_range_are_skipped() -> None:
    decoder = ResizeDecoder()
    sizes = decoder.feed(b'{"Width":-1,"Height":2}{"Width":70000}[1]{"Width":3,"Height":4}')
    assert sizes == [TerminalSize(3, 4)]


def test_malformed_json_stops_decoding_for_good() -> None:
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":oops}') == []
    assert decoder.feed(b'{"Width":1,"Height":1}') == []


async def test_events_hand_out_only_the_latest_size() -> None:
    events = ResizeEvents()
    events.push(TerminalSize(1, 1))
    events.push(TerminalSize(2, 2))
    assert await anext(events) == TerminalSize(2, 2)

    waiting = asyncio.create_task(anext(events))
    await asyncio.sleep(0)
    events.push(TerminalSize(3, 3))
    assert await waiting == TerminalSize(3, 3)


async def test_events_end_after_close_once_drained() -> None:
    events = ResizeEvents()
    events.push(TerminalSize(4, 4))
    events.close()
    events.push(TerminalSize(5, 5))  # ignored after close
    assert [size async for size in events] == [TerminalSize(4, 4)]
    assert [size async for size in closed_resize_events()] == []
