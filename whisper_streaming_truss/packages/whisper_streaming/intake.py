"""A session's audio on its way to the VAD (sans-I/O): the part of the STT core that owns the
audio intake.

``AudioIntake`` decodes the client's frames to 16 kHz float samples, keeps the samples the VAD
has not seen yet, cuts them into 512-sample windows for one VAD job at a time, and owns the
stream's Silero state between jobs: a job takes the state with it and its result hands it
back, so no worker thread touches state the session holds. It also remembers when each sample
arrived, to time finals from the arrival of their speech.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from speech_common.audio import AudioInput, Encoding
from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, VadJob, VadResult, VadStreamState

ARRIVALS_KEPT = 4096  # (sample, time) pairs kept to time finals from the speech's arrival


class AudioIntake:
    def __init__(self, encoding: Encoding, sample_rate: int) -> None:
        self._decoder = AudioInput(encoding, sample_rate, SAMPLE_RATE_HZ)
        self._waiting = np.zeros(0, np.float32)  # 16 kHz samples the VAD has not seen
        self._state: VadStreamState | None = VadStreamState.after_silence()  # None: in a job
        self._job_windows: np.ndarray | None = None  # the windows of the job in flight
        self.received = 0  # 16 kHz samples received
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)

    @property
    def backlog_s(self) -> float:
        """Audio received and not yet given to the VAD."""
        return len(self._waiting) / SAMPLE_RATE_HZ

    @property
    def job_in_flight(self) -> bool:
        return self._job_windows is not None

    @property
    def drained(self) -> bool:
        """Every sample received went to the VAD (and no job is out)."""
        return not len(self._waiting) and not self.job_in_flight

    def feed(self, data: bytes, now: float) -> None:
        """A frame in the session's encoding (any size; a frame may split a sample)."""
        self._add(self._decoder.feed(data), now)

    def flush(self, now: float) -> None:
        """End of audio: the decoder's tail, and the last partial window padded with silence."""
        self._add(self._decoder.flush(), now)
        if len(self._waiting) % WINDOW_SAMPLES:
            pad = WINDOW_SAMPLES - len(self._waiting) % WINDOW_SAMPLES
            self._waiting = np.concatenate([self._waiting, np.zeros(pad, np.float32)])

    def next_job(self) -> VadJob | None:
        """The next VAD job (the stream's state and every whole window waiting), or None while
        one is out or no whole window waits. One job at a time: the state travels with it."""
        n = len(self._waiting) // WINDOW_SAMPLES
        if self.job_in_flight or n == 0:
            return None
        windows = self._waiting[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)
        self._waiting = self._waiting[n * WINDOW_SAMPLES :].copy()
        self._job_windows = windows
        state, self._state = self._state, None
        return state, windows

    def job_done(self, result: VadResult) -> np.ndarray:
        """The VAD job's result: the state comes back; returns the windows it covered."""
        windows, self._job_windows = self._job_windows, None
        self._state = result.state
        return windows

    def job_lost(self) -> None:
        """The VAD job failed or was cancelled: its state is gone (the session ends)."""
        self._job_windows = None

    def arrival_of(self, sample: int, now: float) -> float:
        """When stream sample ``sample`` arrived (``now`` if it is older than what is kept)."""
        for end, at in self._arrivals:
            if end >= sample:
                return at
        return now

    def _add(self, samples: np.ndarray, now: float) -> None:
        self.received += len(samples)
        self._arrivals.append((self.received, now))
        if len(samples):
            self._waiting = np.concatenate([self._waiting, samples])
