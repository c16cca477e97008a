"""speech_common.driver.run_session with scripted cores and fake sockets: every ending releases
exactly once, cancelled streaming jobs are released before it returns, a bug is a 1011, and a
slow reader pauses streaming jobs at the outbox bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest

from speech_common.driver import (
    Cancel,
    Close,
    Command,
    Discard,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
    run_session,
)


class Socket:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.sent: list[Any] = []
        self.closed: tuple[int, str] | None = None
        self.send_gate: asyncio.Event | None = None
        self.broken = False

    def text(self, text: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def _send(self, item: Any) -> None:
        if self.broken:
            raise ConnectionResetError("gone")
        if self.send_gate is not None:
            await self.send_gate.wait()
        self.sent.append(item)

    async def send_json(self, message: dict) -> None:
        await self._send(message)

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


class Runner:
    """Streaming jobs yield ``chunks`` byte strings; records how each one ended."""

    def __init__(self, chunks: int = 3, chunk_bytes: int = 10, hang: bool = False) -> None:
        self.chunks, self.chunk_bytes, self.hang = chunks, chunk_bytes, hang
        self.produced = 0
        self.all_produced = asyncio.Event()
        self.released: list[int] = []
        self.forgotten: list[Hashable] = []

    def submit(self, command: Any, stream_id: Hashable) -> asyncio.Future:
        raise NotImplementedError

    async def stream(self, command: StartStream, stream_id: Hashable) -> AsyncIterator[bytes]:
        try:
            for _ in range(self.chunks):
                self.produced += 1
                yield b"x" * self.chunk_bytes
                await asyncio.sleep(0)
            self.all_produced.set()
            if self.hang:
                await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # releasing an engine request takes a moment
            self.released.append(command.job_id)

    def forget(self, stream_id: Hashable) -> None:
        self.forgotten.append(stream_id)


class StreamingCore:
    """Starts one streaming job on "go", sends what it yields, closes 1000 when it is done."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.done = False
        self.next_deadline = None
        self.fail_on = fail_on
        self.disconnected = False

    def start(self, now: float) -> list[Command]:
        return []

    def on_text(self, text: str, now: float) -> list[Command]:
        if text == self.fail_on:
            raise RuntimeError("a bug in the core")
        return [StartStream(1, "w", None)] if text == "go" else []

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        return []

    def on_result(self, job_id: int, result: Any, now: float) -> list[Command]:
        if isinstance(result, StreamChunk):
            return [Send(result.item)]
        assert isinstance(result, StreamDone)
        self.done = True
        return [Close(1000)]

    def on_sent(self, ack: Any, now: float) -> list[Command]:
        return []

    def on_timer(self, now: float) -> list[Command]:
        return []

    def on_disconnect(self, now: float) -> list[Command]:
        self.disconnected = True
        self.done = True
        return [Cancel(1)]


async def run(ws: Socket, core: Any, runner: Runner, **kwargs: Any) -> tuple[bool, list[int]]:
    releases: list[int] = []
    clean = await asyncio.wait_for(
        run_session(ws, core, runner, "s1", lambda: releases.append(1), **kwargs), 5
    )
    return clean, releases


async def test_streaming_job_to_a_clean_close() -> None:
    ws, runner = Socket(), Runner()
    ws.text("go")
    clean, releases = await run(ws, StreamingCore(), runner)
    assert clean and releases == [1] and ws.closed == (1000, "")
    assert ws.sent == [b"x" * 10] * 3 and runner.forgotten == ["s1"]


async def test_disconnect_waits_until_cancelled_jobs_released_them() -> None:
    ws, runner = Socket(), Runner(hang=True)
    ws.text("go")
    core = StreamingCore()
    task = asyncio.create_task(run(ws, core, runner))
    await runner.all_produced.wait()
    ws.disconnect()
    clean, releases = await task
    # The core cancelled the job; run_session returned only after it was released.
    assert clean and core.disconnected and runner.released == [1] and releases == [1]
    assert ws.closed is None


async def test_send_failure_ends_the_session_and_releases_once() -> None:
    ws, runner = Socket(), Runner(hang=True)
    ws.broken = True
    ws.text("go")
    core = StreamingCore()
    clean, releases = await run(ws, core, runner)
    assert clean and core.disconnected  # a gone client, not a bug
    assert runner.released == [1] and releases == [1]


async def test_a_bug_in_the_core_is_a_1011_and_releases_once() -> None:
    ws, runner = Socket(), Runner()
    ws.text("boom")
    clean, releases = await run(ws, StreamingCore(fail_on="boom"), runner)
    assert not clean and releases == [1]
    assert ws.sent[-1]["body"]["error_type"] == "internal_error" and ws.closed[0] == 1011


@pytest.mark.parametrize("bound", [100, 1000])
async def test_slow_reader_pauses_streaming_at_the_outbox_bound(bound: int) -> None:
    ws, runner = Socket(), Runner(chunks=1000, chunk_bytes=10)
    ws.send_gate = asyncio.Event()  # the client does not read
    ws.text("go")
    task = asyncio.create_task(run(ws, StreamingCore(), runner, max_outbox_bytes=bound))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0  # a loaded CI machine produces slowly; the bound still holds
    while runner.produced < bound // 10 and loop.time() < deadline:  # noqa: ASYNC110 (a count)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # and production stays stopped there
    # Production stopped near the bound: ~bound / 10 chunks queued (plus one in flight).
    assert bound // 10 <= runner.produced <= bound // 10 + 2
    ws.send_gate.set()
    clean, _ = await task
    assert clean and runner.produced == 1000 and len(ws.sent) == 1000


class DiscardingCore(StreamingCore):
    """Queues audio of two generations (acks "a" and "b"), then drops "a"'s on "clear"."""

    def on_text(self, text: str, now: float) -> list[Command]:
        if text == "queue":
            return [Send(f"a{i}".encode(), ack="a") for i in range(5)] + [
                Send(b"b0", ack="b"),
                Send({"type": "marker"}),
            ]
        if text == "clear":
            return [Discard(frozenset({"a"})), Send({"type": "cleared"})]
        if text == "end":
            self.done = True
            return [Close(1000)]
        return []


async def test_discard_drops_queued_sends_unwritten_and_keeps_the_rest_in_order() -> None:
    ws, runner = Socket(), Runner()
    ws.send_gate = asyncio.Event()  # the client reads nothing yet: everything stays queued
    core = DiscardingCore()
    task = asyncio.create_task(run(ws, core, runner))
    ws.text("queue")
    await asyncio.sleep(0.05)
    ws.text("clear")
    ws.text("end")
    await asyncio.sleep(0.05)
    ws.send_gate.set()
    clean, _ = await task
    # At most the one message already being written when "clear" came gets through.
    assert clean and ws.sent[-3:] == [b"b0", {"type": "marker"}, {"type": "cleared"}]
    assert ws.sent[:-3] in ([], [b"a0"])


async def test_a_normal_close_frees_the_slot_before_the_frame_goes_out() -> None:
    """A client that reconnects the moment it reads the close must find its slot free (the
    stand-in refused a session at its capacity of 4 while only 4 clients streamed)."""
    ws, runner = Socket(), Runner()
    ws.text("go")
    releases: list[tuple[int, Any]] = []
    real_close = ws.close

    async def close(code: int = 1000, reason: str = "") -> None:
        releases.append((2, len(calls)))  # the frame goes out now
        await real_close(code, reason)

    calls: list[int] = []
    ws.close = close  # type: ignore[method-assign]
    await asyncio.wait_for(
        run_session(ws, StreamingCore(), runner, "s1", lambda: calls.append(1)), 5
    )
    assert calls == [1] and releases == [(2, 1)]  # released once, before the close frame
