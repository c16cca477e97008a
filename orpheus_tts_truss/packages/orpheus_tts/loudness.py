"""Streaming loudness normalisation (Fish Audio's ``prosody.normalize_loudness``).

Fish documents it as "normalize output loudness for more consistent perceived volume". A whole
generation's loudness is not known while it streams, so this is a slow automatic gain: the
speech level is a running power average over speech frames (pauses do not move it), and the
gain moves towards ``TARGET_DBFS`` at a bounded rate, never past ``MAX_BOOST_DB`` /
``MAX_CUT_DB``, and never so far that a frame's peak would clip. It runs before resampling, on
float samples at the model's rate.
"""

from __future__ import annotations

import numpy as np

TARGET_DBFS = -20.0  # RMS of speech; broadcast speech (-23 LUFS) measures about this
SPEECH_FLOOR_DBFS = -50.0  # quieter frames are pauses or breath: they keep the estimate
MAX_BOOST_DB = 12.0
MAX_CUT_DB = -12.0
FRAME_S = 0.02
LEVEL_TIME_CONSTANT_S = 2.0  # how fast the speech level estimate follows the voice
GAIN_SLEW_DB_PER_S = 6.0  # slow enough to be heard as a level, not as pumping
PEAK_CEILING = 0.98


def _db(power: float) -> float:
    return 10 * np.log10(max(power, 1e-12))


class LoudnessNormalizer:
    """Per session: ``process`` takes float samples (full scale 1.0) and returns them scaled."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = max(1, int(rate * FRAME_S))
        self.level_db: float | None = None  # the speech level so far (None: no speech yet)
        self.gain_db = 0.0

    def process(self, samples: np.ndarray) -> np.ndarray:
        out = np.empty_like(samples)
        for start in range(0, len(samples), self.frame):
            frame = samples[start : start + self.frame]
            out[start : start + len(frame)] = frame * self._frame_gain(frame)
        return out

    def _frame_gain(self, frame: np.ndarray) -> float:
        seconds = len(frame) / self.rate  # a chunk's last frame may be short
        frame_db = _db(float(np.mean(np.square(frame, dtype=np.float64))))
        if frame_db > SPEECH_FLOOR_DBFS:
            if self.level_db is None:  # the first speech sets the level (and the gain) at once
                self.level_db = frame_db
                self.gain_db = self._wanted()
            else:
                power = 10 ** (self.level_db / 10)
                power += seconds / LEVEL_TIME_CONSTANT_S * (10 ** (frame_db / 10) - power)
                self.level_db = _db(power)
        if self.level_db is not None:
            slew = GAIN_SLEW_DB_PER_S * seconds
            step = np.clip(self._wanted() - self.gain_db, -slew, slew)
            self.gain_db += float(step)
        gain = 10 ** (self.gain_db / 20)
        peak = float(np.max(np.abs(frame))) if len(frame) else 0.0
        return min(gain, PEAK_CEILING / peak) if peak * gain > PEAK_CEILING else gain

    def _wanted(self) -> float:
        assert self.level_db is not None
        return float(np.clip(TARGET_DBFS - self.level_db, MAX_CUT_DB, MAX_BOOST_DB))
