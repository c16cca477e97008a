"""One small async driver for sans-I/O session cores (python-websockets' protocol.py pattern).

A core is pure and synchronous: frames, job results, timers and the client's disconnect go in;
commands come out (``Send``, ``Submit``, ``StartStream``, ``Cancel``, ``Discard``, ``Close``). ``Submit`` is a
model job with one result (a Whisper or VAD batch job); ``StartStream`` a job whose items arrive
one by one (a TTS generation's PCM chunks, then ``StreamDone``). A job's id is the core's handle
for it (an int, or the very object that asked): its results come back with it. A ``Send`` with
an ``ack`` is reported back (``on_sent``) once written, so a core knows what the client has
actually been given. ``run_session`` runs any core on a Starlette WebSocket, ``run_transport`` on
any ``Transport`` (an HTTP request's exchange), with three tasks in one ``asyncio.TaskGroup``:

- the reader turns frames into events (it never waits for the model or the writer, so control
  messages are answered at once);
- the pump feeds events to the core and carries out its commands; job results come back as events
  through ``add_done_callback`` (no task awaits a future it does not own, so a cancelled job can
  never leave a task waiting for it);
- the writer is the one task that sends, in order; a ``Close`` goes out after what was queued.

Whatever ends the session (the core closing, the client leaving, a send failing, a bug), the
``finally`` releases, exactly once, everything the session holds: its queued and running jobs
(cancelled, then ``JobRunner.forget``), and the caller's ``release`` (gate slot, gauges).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .ws import CloseCode, ProtocolError, safe_close

logger = logging.getLogger(__name__)


# -- commands (core -> driver) -----------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    message: Any  # what the transport writes (a WebSocket: a dict as JSON, a str, bytes)
    ack: Hashable | None = None  # reported to the core (on_sent) once written to the socket
    # What it weighs against the outbox bound (audio queued for a slow client); None: the
    # length of a bytes message (audio), nothing for any other. Audio in another shape (base64
    # JSON text) says so.
    size: int | None = None

    @property
    def outbox_bytes(self) -> int:
        if self.size is not None:
            return self.size
        return len(self.message) if isinstance(self.message, bytes) else 0


@dataclass(frozen=True)
class Submit:
    job_id: Hashable  # the core's handle, handed back with the result
    worker: str  # which model worker: the JobRunner knows them by name
    payload: Any
    priority: int = 0
    replace_key: Hashable | None = None


@dataclass(frozen=True)
class StartStream:
    job_id: Hashable  # the core's handle, handed back with each item
    worker: str
    payload: Any


@dataclass(frozen=True)
class StreamChunk:
    """One item of a streaming job (delivered through ``on_result``)."""

    item: Any


@dataclass(frozen=True)
class StreamDone:
    """A streaming job ended: ``error`` is None when it finished, else what it failed with."""

    error: BaseException | None = None


@dataclass(frozen=True)
class Cancel:
    job_id: Hashable


@dataclass(frozen=True)
class Close:
    code: int = CloseCode.NORMAL
    reason: str = ""
    error: ProtocolError | None = None  # sent as a typed error frame before the close


@dataclass(frozen=True)
class Discard:
    """Drop the queued, not yet written ``Send``s whose ack is in ``acks`` (a barge-in: audio
    the client must not hear). A message already being written still goes out."""

    acks: frozenset


Command = Send | Submit | StartStream | Cancel | Discard | Close
# A session's unsent bytes (audio queued for a slow client): streaming jobs pause beyond this.
DEFAULT_MAX_OUTBOX_BYTES = 1 << 20  # 1 MiB: ~22 s of 24 kHz s16le audio
# Cancelled streaming jobs must release their model requests; a stuck one is logged after this.
STREAM_CANCEL_WAIT_S = 5.0


class JobCancelled(Exception):
    """A job's future was cancelled by someone other than the core (its worker dropped it)."""


class SessionCore(Protocol):
    """What ``run_session`` needs of a core. Every method returns the commands it causes."""

    @property
    def done(self) -> bool: ...

    @property
    def next_deadline(self) -> float | None: ...

    def start(self, now: float) -> list[Command]: ...

    def on_text(self, text: str, now: float) -> list[Command]: ...

    def on_bytes(self, data: bytes, now: float) -> list[Command]: ...

    def on_result(self, job_id: Hashable, result: Any, now: float) -> list[Command]: ...

    def on_sent(self, ack: Hashable, now: float) -> list[Command]: ...

    def on_timer(self, now: float) -> list[Command]: ...

    def on_disconnect(self, now: float) -> list[Command]: ...


class Transport(Protocol):
    """What a session runs over: a WebSocket (``WebSocketTransport``), or an HTTP request."""

    async def receive(self) -> str | bytes | None:
        """The client's next frame; None once the client is gone."""
        ...

    async def send(self, message: Any) -> None: ...

    async def close(self, code: int, reason: str = "", error: ProtocolError | None = None) -> None:
        """The end: ``error`` first where there is one; best effort (the client may be gone)."""
        ...


class WebSocketTransport:
    """A Starlette WebSocket as a ``Transport``: dicts go out as JSON, str as text, bytes as
    binary; the error of a close as a typed error frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        while True:
            try:
                message = await self.ws.receive()
            except Exception:  # the transport broke under us: the client is gone
                return None
            if message["type"] == "websocket.disconnect":
                return None
            if message["type"] == "websocket.receive":
                text = message.get("text")
                return text if text is not None else message.get("bytes") or b""

    async def send(self, message: Any) -> None:
        if isinstance(message, bytes):
            await self.ws.send_bytes(message)
        elif isinstance(message, str):
            await self.ws.send_text(message)
        else:
            await self.ws.send_json(message)

    async def close(self, code: int, reason: str = "", error: ProtocolError | None = None) -> None:
        if error is not None:
            try:
                await self.ws.send_json(error.frame())
            except Exception:  # client already gone
                logger.debug("could not send error frame %s", error.error_type)
        await safe_close(self.ws, code, reason)


class JobRunner(Protocol):
    def submit(self, command: Submit, stream_id: Hashable) -> asyncio.Future: ...

    def stream(self, command: StartStream, stream_id: Hashable) -> AsyncIterator[Any]: ...

    def forget(self, stream_id: Hashable) -> None: ...


class JobIds:
    """Unique job ids for one core (the driver keys its futures by them)."""

    def __init__(self) -> None:
        self._next = itertools.count(1)

    def new(self) -> int:
        return next(self._next)


# -- events (driver -> core) ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Frame:
    data: str | bytes


@dataclass(frozen=True)
class _Result:
    job_id: Hashable
    future: asyncio.Future


@dataclass(frozen=True)
class _StreamEvent:
    job_id: Hashable
    value: StreamChunk | StreamDone


@dataclass(frozen=True)
class _Sent:
    ack: Hashable


_DISCONNECT = object()
INTERNAL_ERROR = ProtocolError("internal_error", "internal server error", CloseCode.INTERNAL_ERROR)


@dataclass
class _Session:
    transport: Transport
    core: SessionCore
    runner: JobRunner
    stream_id: Hashable
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES
    jobs: dict[Hashable, asyncio.Future] = field(default_factory=dict)
    streams: dict[Hashable, asyncio.Task] = field(default_factory=dict)
    stopping: set[asyncio.Task] = field(default_factory=set)  # cancelled, still releasing
    closing: bool = False
    outbox_bytes: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)
    # Called (once) just before a normal close frame goes out: the session's work is done, and
    # a client that reconnects at once must find its slot free (admission counts open slots).
    before_close: Callable[[], None] = lambda: None

    # -- tasks ---------------------------------------------------------------------------------
    async def read(self) -> None:
        while True:
            data = await self.transport.receive()
            if data is None:
                self.events.put_nowait(_DISCONNECT)
                return
            self.events.put_nowait(_Frame(data))

    async def pump(self) -> None:
        self.execute(self.core.start(self.loop.time()))
        while not self.core.done:
            event = await self._next_event()
            now = self.loop.time()
            if event is None:
                commands = self.core.on_timer(now)
            elif event is _DISCONNECT:
                commands = self.core.on_disconnect(now)
            elif isinstance(event, _Result):
                if self.jobs.pop(event.job_id, None) is None:
                    continue  # the core cancelled it: it no longer cares
                commands = self.core.on_result(event.job_id, _outcome(event.future), now)
            elif isinstance(event, _StreamEvent):
                if event.job_id not in self.streams:
                    continue  # cancelled by the core
                if isinstance(event.value, StreamDone):
                    self.streams.pop(event.job_id)
                commands = self.core.on_result(event.job_id, event.value, now)
            elif isinstance(event, _Sent):
                commands = self.core.on_sent(event.ack, now)
            elif isinstance(event.data, str):
                commands = self.core.on_text(event.data, now)
            else:
                commands = self.core.on_bytes(event.data, now)
            self.execute(commands)

    async def _next_event(self) -> Any:
        """The next event, or None when the core's deadline passes first. (asyncio.timeout, not
        wait_for: a timed-out Queue.get leaves its item in the queue, nothing is lost.)"""
        deadline = self.core.next_deadline
        try:
            async with asyncio.timeout_at(deadline):
                return await self.events.get()
        except TimeoutError:
            return None

    async def write(self) -> None:
        while True:
            item = await self.outbox.get()
            if isinstance(item, Close):
                if item.code == CloseCode.NORMAL:
                    self.before_close()
                await self.transport.close(item.code, item.reason, item.error)
                return
            await self.transport.send(item.message)
            if item.outbox_bytes:
                self.outbox_bytes -= item.outbox_bytes
                if self.outbox_bytes < self.max_outbox_bytes:
                    self.room.set()
            if item.ack is not None:
                self.events.put_nowait(_Sent(item.ack))

    # -- commands ------------------------------------------------------------------------------
    def execute(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                if not self.closing:
                    if command.outbox_bytes:
                        self.outbox_bytes += command.outbox_bytes
                        if self.outbox_bytes >= self.max_outbox_bytes:
                            self.room.clear()
                    self.outbox.put_nowait(command)
            elif isinstance(command, Submit):
                self._submit(command)
            elif isinstance(command, StartStream):
                self.streams[command.job_id] = asyncio.create_task(
                    self._stream(command), name=f"{self.stream_id}-job-{command.job_id}"
                )
            elif isinstance(command, Cancel):
                future = self.jobs.pop(command.job_id, None)
                if future is not None:
                    future.cancel()
                task = self.streams.pop(command.job_id, None)
                if task is not None:
                    self._stop(task)
            elif isinstance(command, Discard):
                self._discard(command.acks)
            elif isinstance(command, Close) and not self.closing:
                self.closing = True
                self.outbox.put_nowait(command)

    def _discard(self, acks: frozenset) -> None:
        kept = []
        while not self.outbox.empty():
            item = self.outbox.get_nowait()
            if isinstance(item, Send) and item.ack is not None and item.ack in acks:
                self.outbox_bytes -= item.outbox_bytes
                continue
            kept.append(item)
        for item in kept:
            self.outbox.put_nowait(item)
        if self.outbox_bytes < self.max_outbox_bytes:
            self.room.set()

    def _stop(self, task: asyncio.Task) -> None:
        """Cancel a streaming job; the session waits for it to finish releasing at its end."""
        task.cancel()
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)

    def _submit(self, command: Submit) -> None:
        try:
            future = self.runner.submit(command, self.stream_id)
        except Exception as exc:  # the worker is stopped: the core hears it as a failed job
            future = self.loop.create_future()
            future.set_exception(exc)
        self.jobs[command.job_id] = future
        future.add_done_callback(
            lambda f, job_id=command.job_id: self.events.put_nowait(_Result(job_id, f))
        )

    async def _stream(self, command: StartStream) -> None:
        """Pump one streaming job's items into the events; pause while the client is behind."""
        job_id = command.job_id
        try:
            iterator = self.runner.stream(command, self.stream_id)
            async with contextlib.aclosing(iterator):
                async for item in iterator:
                    self.events.put_nowait(_StreamEvent(job_id, StreamChunk(item)))
                    if not self.room.is_set():
                        await self.room.wait()  # back-pressure: a bounded outbox
        except asyncio.CancelledError:
            raise  # the core (or the session's end) cancelled it: nothing to report
        except Exception as exc:
            self.events.put_nowait(_StreamEvent(job_id, StreamDone(exc)))
            return
        self.events.put_nowait(_StreamEvent(job_id, StreamDone()))

    async def cancel_jobs(self) -> None:
        """Cancel every job still running; wait until the streaming ones released their model
        requests (closing a generation's iterator aborts it in the engine)."""
        for future in self.jobs.values():
            future.cancel()
        self.jobs.clear()
        for task in self.streams.values():
            self._stop(task)
        self.streams.clear()
        tasks = set(self.stopping)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=STREAM_CANCEL_WAIT_S)
            if stuck:
                logger.error("session %s: %d jobs did not stop", self.stream_id, len(stuck))


def _outcome(future: asyncio.Future) -> Any:
    """The job's result, or the exception it failed with (a cancelled job included)."""
    if future.cancelled():
        return JobCancelled()
    return future.exception() or future.result()


async def run_session(
    ws: Any,
    core: SessionCore,
    runner: JobRunner,
    stream_id: Hashable,
    release: Callable[[], None],
    *,
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
) -> bool:
    """Run ``core`` on the WebSocket ``ws`` (``run_transport``)."""
    return await run_transport(
        WebSocketTransport(ws), core, runner, stream_id, release, max_outbox_bytes=max_outbox_bytes
    )


async def run_transport(
    transport: Transport,
    core: SessionCore,
    runner: JobRunner,
    stream_id: Hashable,
    release: Callable[[], None],
    *,
    max_outbox_bytes: int = DEFAULT_MAX_OUTBOX_BYTES,
) -> bool:
    """Run ``core`` on ``transport`` until it closes or the client leaves; always ``release()``.
    Returns False when the session ended on an internal error (a bug: logged, 1011)."""
    released = False

    def release_once() -> None:
        nonlocal released
        if not released:
            released = True
            release()

    session = _Session(
        transport, core, runner, stream_id, asyncio.get_running_loop(),
        max_outbox_bytes=max_outbox_bytes, before_close=release_once,
    )  # fmt: skip
    session.room.set()
    crashed = False
    try:
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(session.read(), name=f"{stream_id}-read")
            writer = group.create_task(session.write(), name=f"{stream_id}-write")
            await session.pump()
            if session.closing:
                await writer  # the close frame is out
            else:  # the client left: nobody to write to
                writer.cancel()
            reader.cancel()
    except* Exception as group_error:
        # A send to a gone client, or a bug: the session ends either way; bugs are logged.
        core.on_disconnect(session.loop.time())  # the core accounts for what it had running
        for exc in group_error.exceptions:
            if not _is_disconnect(exc):
                crashed = True
                logger.error("session %s failed", stream_id, exc_info=exc)
                await transport.close(
                    INTERNAL_ERROR.close_code, INTERNAL_ERROR.message, INTERNAL_ERROR
                )
                break
    finally:
        try:
            await session.cancel_jobs()
        finally:
            runner.forget(stream_id)
            release_once()
    return not crashed


# How a send to a client that left surfaces (Starlette, uvicorn, websockets).
_DISCONNECT_ERRORS = {"WebSocketDisconnect", "ClientDisconnected", "ConnectionClosed"}


def _is_disconnect(exc: BaseException) -> bool:
    if type(exc).__name__ in _DISCONNECT_ERRORS or isinstance(exc, OSError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("close" in message or "disconnect" in message)
