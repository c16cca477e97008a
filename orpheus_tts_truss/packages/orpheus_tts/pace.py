"""How the generations in flight keep up with real time: the TTS replica's load signals.

Two signals, both read by admission (``speech_common.admission``) before a new session starts:
- **first-audio wait**: the longest any generation in flight has waited for its first audio
  (an overloaded engine shows it before any client complains);
- **generation speed**: audio generated per wall second since each generation's first frame,
  the median over the generations in flight (below 1x a listener hears gaps). Measured on the
  engine's side of the pipeline, which never waits for a client, so a slow reader does not
  look like load; the median, so that one odd generation does not either.

Pure (time passed in), one instance per replica, used from the event loop only.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from orpheus_tts.tokens import FRAME_SECONDS

# A generation's speed is read only after this long since its first frame: the first frames
# come in a burst after prefill, and a rate over a few of them says nothing.
MIN_SPEED_WINDOW_S = 0.5


@dataclass
class _Generation:
    started_at: float
    first_frame_at: float | None = None
    frames: int = 0
    produced_at: float | None = None  # the engine's last token: the speed clock stops
    first_audio_at: float | None = None


class GenerationPace:
    def __init__(self) -> None:
        self._live: dict[str, _Generation] = {}

    def __len__(self) -> int:
        return len(self._live)

    def started(self, request_id: str, now: float) -> None:
        self._live[request_id] = _Generation(started_at=now)

    def frame(self, request_id: str, now: float) -> None:
        gen = self._live.get(request_id)
        if gen is None:
            return
        if gen.first_frame_at is None:
            gen.first_frame_at = now
        gen.frames += 1

    def first_audio(self, request_id: str, now: float) -> None:
        gen = self._live.get(request_id)
        if gen is not None and gen.first_audio_at is None:
            gen.first_audio_at = now

    def produced(self, request_id: str, now: float) -> None:
        gen = self._live.get(request_id)
        if gen is not None:
            gen.produced_at = now

    def ended(self, request_id: str) -> None:
        self._live.pop(request_id, None)

    def first_audio_wait_s(self, now: float) -> float:
        """The longest wait for first audio among the generations in flight (0 if none waits)."""
        waits = [now - g.started_at for g in self._live.values() if g.first_audio_at is None]
        return max(waits, default=0.0)

    def speed_x(self, now: float) -> float | None:
        """Median audio seconds generated per wall second, over the generations in flight long
        enough to tell (None when none is)."""
        speeds = []
        for g in self._live.values():
            if g.first_frame_at is None:
                continue
            elapsed = (g.produced_at or now) - g.first_frame_at
            if elapsed >= MIN_SPEED_WINDOW_S:
                # Frames after the first one, over the time since it: the rate once streaming.
                speeds.append((g.frames - 1) * FRAME_SECONDS / elapsed)
        return statistics.median(speeds) if speeds else None
