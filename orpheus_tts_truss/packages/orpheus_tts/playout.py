"""A session's audio on its way to the client (sans-I/O): the part of the TTS core that owns the
playout and encoding.

``Playout`` is the *line*: everything that must reach the client in order after audio (chunks
of PCM, a turn's codec tail or a clear's reset as ``EncoderOp``, the core's events, the line's
``END``), in that order. It owns the session's ``AudioEncoder`` and the audio timeline (the
samples given to it). With PCM or WAV an item's encoder call runs at once, on the event loop,
as it comes; an FFmpeg codec (``AudioEncoder.offloaded``) never runs here: the line's items
are handed, with the encoder itself, to one encode job, and come out when its result hands the
encoder back. One encode job at a time: the stream's chunks stay in order and its FFmpeg state
is only ever on one thread.

The line creates no ``Submit``: ``drain`` returns the job to submit (its handle and payload),
and the core submits it; what comes out (``Ready``: an item with its encoder output) is the
core's to turn into outputs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from orpheus_tts.audio_format import AudioEncoder, EncodeJob, EncodeResult, EncoderOp
from orpheus_tts.events import Event

Owner = TypeVar("Owner")  # what a chunk's audio belongs to (the core's generation)


@dataclass(frozen=True, eq=False)
class Chunk(Generic[Owner]):
    """PCM (s16le mono at the encoder's source rate) in the line: its output is its owner's
    audio."""

    pcm: bytes
    owner: Owner


class EndOfLine:
    """The line's last item: nothing is taken after it."""


END = EndOfLine()
# What the line holds, in the order its outputs reach the client.
LineItem = Chunk[Any] | EncoderOp | Event | EndOfLine
Ready = tuple[LineItem, bytes]  # an item out of the line, with its encoder output


@dataclass(eq=False)
class EncodeBatch:
    """An encode job's handle: the line's items it took, each with its op's index in the job
    (None: an item with no encoder call, out in its place once the job is back)."""

    items: list[tuple[LineItem, int | None]]


@dataclass(frozen=True)
class Drained:
    ready: list[Ready]  # out now, in order
    job: tuple[EncodeBatch, EncodeJob] | None = None  # to submit: the handle and the payload


class Playout:
    def __init__(self, encoder: AudioEncoder) -> None:
        self.encoder: AudioEncoder | None = encoder  # None while an encode job holds it
        self.offloaded = encoder.offloaded  # the encoder runs in encode jobs (an FFmpeg codec)
        self._source_rate = encoder.source_rate
        self._line: deque[LineItem] = deque()  # in client order, not yet out
        self._job: EncodeBatch | None = None  # the one encode job out, if any
        self._stream_open = False  # the encoder has a codec stream begun (in line order)
        self._samples_in = 0  # PCM samples given to the line: the session's audio timeline

    @property
    def job(self) -> EncodeBatch | None:
        """The encode job out (holding the encoder), if any."""
        return self._job

    def timeline_s(self) -> float:
        """Seconds of audio given to the encoder (the resampler's delay does not shift it)."""
        return round(self._samples_in / self._source_rate, 4)

    def add_audio(self, pcm: bytes, owner: Any) -> None:
        """A chunk of PCM, on the timeline from now."""
        self._line.append(Chunk(pcm, owner))
        self._samples_in += len(pcm) // 2

    def add(self, items: list[LineItem]) -> None:
        self._line.extend(items)

    def drop(self, dropped: Callable[[LineItem], bool]) -> None:
        """Drop the items not yet out (the job's included: their output is not sent)."""
        self._line = deque(item for item in self._line if not dropped(item))
        if self._job is not None:
            self._job.items = [(item, op) for item, op in self._job.items if not dropped(item)]

    def drain(self) -> Drained:
        """The items that can go out now; the rest handed to one encode job where the encoder
        is offloaded."""
        ready: list[Ready] = []
        while self._line:
            if self._job is not None and self._job.items:
                break  # outputs due before the rest are still in the encoder
            item = self._line[0]
            if self._needs_worker(item):
                if self.encoder is not None:  # else a cleared job still holds it: wait
                    return Drained(ready, self._take_job())
                break
            self._line.popleft()
            ready.append((item, self._run_here(item)))
            if item is END:
                break
        return Drained(ready)

    def job_done(self, result: EncodeResult) -> list[Ready]:
        """The encode job's result: the encoder is back; its items, in their order."""
        job, self._job = self._job, None
        self.encoder = result.encoder
        return [(item, result.outputs[op] if op is not None else b"") for item, op in job.items]

    def job_lost(self) -> None:
        """The encode job failed: the encoder went with it (the session ends)."""
        self._job = None

    def close(self) -> None:
        """Nothing more goes out: drop the line and the job (its encoder goes with it), and
        release what the codec holds."""
        self._job = None
        self._line.clear()
        if self.encoder is not None:
            self.encoder.reset()

    def _needs_worker(self, item: LineItem) -> bool:
        if not self.offloaded:
            return False
        if isinstance(item, Chunk):
            return True
        # A finish or reset with no codec stream begun has nothing for FFmpeg to do.
        return isinstance(item, EncoderOp) and self._stream_open

    def _run_here(self, item: LineItem) -> bytes:
        """An item's encoder call on the event loop: PCM/WAV only (no FFmpeg)."""
        if self.offloaded:
            return b""  # an op without a codec stream: nothing to call
        if isinstance(item, Chunk):
            return self.encoder.encode(item.pcm)
        if item is EncoderOp.FINISH:
            return self.encoder.finish()
        if item is EncoderOp.RESET:
            self.encoder.reset()
        return b""

    def _take_job(self) -> tuple[EncodeBatch, EncodeJob]:
        """Hand the encoder, with every item in the line, to one encode job."""
        items: list[tuple[LineItem, int | None]] = []
        ops: list[bytes | EncoderOp] = []
        for item in self._line:
            op = None
            if isinstance(item, Chunk) or (isinstance(item, EncoderOp) and self._stream_open):
                op = len(ops)
                ops.append(item.pcm if isinstance(item, Chunk) else item)
            if isinstance(item, (Chunk, EncoderOp)):  # a chunk opens a stream; these end it
                self._stream_open = isinstance(item, Chunk)
            items.append((item, op))
        self._line.clear()
        self._job = EncodeBatch(items)
        job = EncodeJob(self.encoder, tuple(ops))
        self.encoder = None  # the job owns it until its result hands it back
        return self._job, job
