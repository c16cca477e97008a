"""Streaming audio decoding and resampling: bytes of any frame size in, float32 mono out."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import soxr

# The rate Whisper takes (and Silero VAD runs at): every STT stream is resampled to it once.
WHISPER_RATE_HZ = 16000

S16_MAX = 32768.0
MULAW_BIAS = 0x84
MULAW_CLIP = 32635


class Encoding(StrEnum):
    PCM_S16LE = "pcm_s16le"
    PCM_MULAW = "pcm_mulaw"
    # Little-endian float32 in [-1, 1]: what a browser's Web Audio (Float32Array) and
    # WhisperLive's clients produce. Not in Baseten's published protocol; named like the TTS's.
    PCM_F32LE = "pcm_f32le"


BYTES_PER_SAMPLE = {Encoding.PCM_S16LE: 2, Encoding.PCM_MULAW: 1, Encoding.PCM_F32LE: 4}


def _mulaw_decode_table() -> np.ndarray:
    """ITU-T G.711 mu-law byte -> linear int16 (the classic 256-entry table)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


_MULAW_TABLE = _mulaw_decode_table()


def mulaw_decode(data: bytes) -> np.ndarray:
    """mu-law bytes -> int16 samples."""
    return _MULAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def mulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> mu-law bytes (G.711); used by clients and tests."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), MULAW_CLIP) + MULAW_BIAS
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def _alaw_decode_table() -> np.ndarray:
    """ITU-T G.711 A-law byte -> linear int16 (the classic 256-entry table)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


_ALAW_TABLE = _alaw_decode_table()


def alaw_decode(data: bytes) -> np.ndarray:
    """A-law bytes -> int16 samples (G.711; telephony outside North America and Japan)."""
    return _ALAW_TABLE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> A-law bytes (G.711); used by clients and tests."""
    x = samples.astype(np.int32) >> 3  # 13-bit
    mask = np.where(x >= 0, 0xD5, 0x55)
    x = np.where(x >= 0, x, -x - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, x)  # first end >= x
    shift = np.where(segment < 2, 1, segment)
    value = (segment << 4) | ((x >> shift) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return (value ^ mask).astype(np.uint8).tobytes()


_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def s32le_to_float(data: bytes) -> np.ndarray:
    """Little-endian signed 32-bit PCM bytes -> float32 in [-1, 1)."""
    return (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / S16_MAX


def float_to_s16le(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] -> little-endian int16 bytes (rounded, clipped, never wraps; NaN -> 0)."""
    clipped = np.clip(np.nan_to_num(samples, nan=0.0), -1.0, 32767.0 / S16_MAX)
    return np.rint(clipped * S16_MAX).astype("<i2").tobytes()


def f32le_to_float(data: bytes) -> np.ndarray:
    """Little-endian float32 bytes -> float32 in [-1, 1]. A client's samples are not trusted:
    beyond full scale they are clipped (as ``float_to_s16le`` clips), +/-inf become +/-1 and
    NaN becomes 0 (silence): no value reaches the resampler, the VAD or Whisper unbounded."""
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)  # native order, writable
    np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(samples, -1.0, 1.0, out=samples)


class PcmDecoder:
    """Bytes in any frame size -> float32 samples; carries a split sample over to the next frame."""

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = Encoding(encoding)
        self._bytes_per_sample = BYTES_PER_SAMPLE[self.encoding]
        self._remainder = b""

    def decode(self, data: bytes) -> np.ndarray:
        if self._remainder:
            data = self._remainder + data
        usable = len(data) - len(data) % self._bytes_per_sample
        self._remainder = data[usable:]
        payload = data[:usable]
        if self.encoding is Encoding.PCM_F32LE:
            return f32le_to_float(payload)
        if self.encoding is Encoding.PCM_S16LE:
            return int16_to_float(np.frombuffer(payload, dtype="<i2"))
        return int16_to_float(mulaw_decode(payload))

    @property
    def pending_bytes(self) -> int:
        return len(self._remainder)


class StreamingResampler:
    """Stateful high-quality resampler (soxr) for a stream cut into arbitrary chunks."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")
        )

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return samples.astype(np.float32, copy=False)
        return self._stream.resample_chunk(samples.astype(np.float32, copy=False), last=last)


class AudioInput:
    """Client audio bytes -> float32 mono at ``target_rate`` (decode + resample, streaming)."""

    def __init__(self, encoding: Encoding, sample_rate: int, target_rate: int) -> None:
        self._decoder = PcmDecoder(encoding)
        self._resampler = StreamingResampler(sample_rate, target_rate)

    def feed(self, data: bytes) -> np.ndarray:
        return self._resampler.process(self._decoder.decode(data))

    def flush(self) -> np.ndarray:
        """The resampler's delayed tail, at end of stream."""
        return self._resampler.process(np.zeros(0, dtype=np.float32), last=True)


class SampleBuffer:
    """Append-only float32 buffer with amortised O(1) appends and cheap front consumption."""

    def __init__(self, capacity: int = 16000) -> None:
        self._data = np.zeros(max(capacity, 1), dtype=np.float32)
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return self._end - self._start

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if self._end + n > len(self._data):
            live = self._data[self._start : self._end]
            capacity = max(len(self._data), 2 * (len(live) + n))
            grown = np.zeros(capacity, dtype=np.float32)
            grown[: len(live)] = live
            self._data, self._start, self._end = grown, 0, len(live)
        self._data[self._end : self._end + n] = samples
        self._end += n

    def view(self) -> np.ndarray:
        return self._data[self._start : self._end]

    def consume(self, n: int) -> np.ndarray:
        """Remove and return (a copy of) the first ``n`` samples."""
        n = min(n, len(self))
        out = self._data[self._start : self._start + n].copy()
        self._start += n
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def clear(self) -> None:
        self._start = self._end = 0
