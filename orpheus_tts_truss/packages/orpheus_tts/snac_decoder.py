"""SNAC decoding: a sync codec (model + batched window decode) and the shared async decode service.

All sessions' windows go to one ``BatchWorker`` thread; windows of one shape are decoded as one
tensor batch, results return to each stream in order. Codes are validated before batching, and a
window that still fails is retried alone by the worker, so one bad window never fails a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orpheus_tts.snac_stream import DecodeWindow
from orpheus_tts.tokens import (
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    frames_to_codes,
    validate_frames,
)
from speech_common import metrics
from speech_common.batching import BatchWorker

logger = logging.getLogger(__name__)

# hubertsiuzdak/snac_24khz config.json (19.8 M params); SNAC(**config) builds it.
SNAC_24KHZ_CONFIG: dict[str, Any] = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}
CPU_WARMUP_MAX_BATCH = 4
INT16_FULL_SCALE = 32767  # SNAC ends in tanh: |x| <= 1, so x * 32767 fits int16

_DECODE_SECONDS = metrics.histogram(
    "orpheus_snac_decode_batch_seconds",
    "Wall time of one batched SNAC decode",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
_BATCH_SIZE = metrics.histogram(
    "orpheus_snac_decode_batch_size",
    "Windows per batched SNAC decode",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
_WINDOWS = metrics.counter("orpheus_snac_windows_decoded_total", "SNAC windows decoded")


def disable_noise(model: torch.nn.Module) -> int:
    """Replace SNAC's NoiseBlocks with identities (deterministic decode); returns how many."""
    from snac.layers import NoiseBlock

    replaced = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        for name, child in list(module.named_children()):
            if isinstance(child, NoiseBlock):
                setattr(module, name, torch.nn.Identity())
                replaced += 1
    return replaced


def build_snac(
    model_dir: str | Path | None, *, device: str = "cpu", noise: bool = True, seed: int = 0
) -> torch.nn.Module:
    """Load SNAC from a local directory (config.json + pytorch_model.bin), or random weights."""
    from snac import SNAC

    if model_dir is None:
        torch.manual_seed(seed)
        model = SNAC(**SNAC_24KHZ_CONFIG)
    else:
        path = Path(model_dir)
        if not (path / "config.json").is_file() or not (path / "pytorch_model.bin").is_file():
            raise FileNotFoundError(
                f"SNAC weights not found in {path}: expected config.json and pytorch_model.bin "
                "(hubertsiuzdak/snac_24khz)"
            )
        model = SNAC.from_pretrained(str(path))
    if not noise:
        disable_noise(model)
    return model.eval().to(device)


class SnacCodec:
    """Sync SNAC decode of frame windows (fp32); called from the decode worker thread only."""

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu", compile: bool = False):
        self.model = model
        self.device = torch.device(device)
        self._decode = self._decode_eager
        if compile:
            # dynamic=True: one graph for every window shape and batch size.
            self._decode = torch.compile(self._decode_eager, dynamic=True)

    def _decode_eager(self, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
        z = self.model.quantizer.from_codes([c0, c1, c2])
        return self.model.decoder(z)

    @torch.inference_mode()
    def decode_frames_batch(self, batch: np.ndarray) -> np.ndarray:
        """(B, n, 7) codes → (B, n * 2048) float32 samples in [-1, 1]."""
        b, n, _ = batch.shape
        levels = frames_to_codes(batch.reshape(b * n, -1))
        tensors = [
            torch.from_numpy(np.ascontiguousarray(level.reshape(b, -1))).to(self.device)
            for level in levels
        ]
        audio = self._decode(*tensors)
        out = audio.reshape(b, -1).float().cpu().numpy()
        if out.shape[1] != n * SAMPLES_PER_FRAME:
            raise RuntimeError(f"SNAC returned {out.shape[1]} samples for {n} frames")
        return out

    def decode_offline(self, frames: np.ndarray) -> np.ndarray:
        """The whole generation in one decode (the reference the stream must match), int16."""
        audio = self.decode_frames_batch(validate_frames(frames)[None])[0]
        return to_int16(audio)

    def decode_windows(self, windows: Sequence[DecodeWindow]) -> list[bytes | BaseException]:
        """Decode same-shape windows as one batch; each result is its emitted PCM s16le bytes."""
        results: list[bytes | BaseException] = [ValueError("not decoded")] * len(windows)
        valid: list[int] = []
        for i, window in enumerate(windows):
            try:
                validate_frames(window.frames)
                if not 0 <= window.emit_start < window.emit_end <= window.n_frames:
                    raise ValueError(f"emit range {window.emit_start}:{window.emit_end} invalid")
                valid.append(i)
            except ValueError as exc:
                results[i] = exc
        if not valid:
            return results
        shapes = {windows[i].n_frames for i in valid}
        if len(shapes) != 1:
            raise ValueError(f"one batch must hold one window shape, got {sorted(shapes)}")
        started = time.perf_counter()
        audio = self.decode_frames_batch(np.stack([windows[i].frames for i in valid]))
        _DECODE_SECONDS.observe(time.perf_counter() - started)
        _BATCH_SIZE.observe(len(valid))
        _WINDOWS.inc(len(valid))
        for row, i in enumerate(valid):
            w = windows[i]
            emitted = audio[row, w.emit_start * SAMPLES_PER_FRAME : w.emit_end * SAMPLES_PER_FRAME]
            results[i] = to_int16(emitted).tobytes()
        return results

    def warmup(self, window_frames: Sequence[int], max_batch: int) -> None:
        """Run each window shape at batch 1 and ``max_batch`` (compile, allocator, caches).

        On CPU a full-size batch costs seconds per shape at load for little gain: cap it at 4.
        """
        if self.device.type == "cpu":
            max_batch = min(max_batch, CPU_WARMUP_MAX_BATCH)
        for n in window_frames:
            for b in sorted({1, max_batch}):
                self.decode_frames_batch(np.zeros((b, n, 7), dtype=np.int64))


def to_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(np.clip(audio, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)


class SnacDecodeService:
    """The shared decode worker: ``await decode(window, stream_id)`` from any session's loop."""

    def __init__(self, codec: SnacCodec, *, max_batch: int = 16, max_wait_ms: float = 2.0) -> None:
        self.codec = codec
        self.max_batch = max_batch
        self._worker: BatchWorker[DecodeWindow, bytes] = BatchWorker(
            "snac-decode",
            codec.decode_windows,
            max_batch=max_batch,
            max_wait_s=max_wait_ms / 1000.0,
            batch_key=lambda window: window.shape_key,
        )

    def start(self) -> SnacDecodeService:
        self._worker.start()
        return self

    def stop(self) -> None:
        self._worker.stop()

    def submit(self, window: DecodeWindow, stream_id: Hashable) -> asyncio.Future:
        """Queue a window (validated first: a bad one fails here, never inside a batch)."""
        validate_frames(window.frames)
        return self._worker.submit(window, stream_id=stream_id)

    async def decode(self, window: DecodeWindow, stream_id: Hashable) -> bytes:
        return await self.submit(window, stream_id)

    def cancel_stream(self, stream_id: Hashable) -> int:
        """Drop a stream's queued windows (generation cancelled); returns how many."""
        return self._worker.cancel_stream(stream_id)

    @property
    def healthy(self) -> bool:
        return self._worker.healthy

    def oldest_wait_s(self) -> float:
        return self._worker.oldest_wait_s()

    @property
    def queue_depth(self) -> int:
        return self._worker.queue_depth

    @property
    def batches_run(self) -> int:
        return self._worker.batches_run

    @property
    def jobs_run(self) -> int:
        return self._worker.jobs_run


# -- measurement helpers (tests, scripts/bench/tts.py) -------------------------------------------
def stream_decode_sync(codec: SnacCodec, frames: np.ndarray, policy: Any) -> np.ndarray:
    """Decode ``frames`` window by window exactly as a stream would; int16 samples."""
    from orpheus_tts.snac_stream import plan_all_windows

    pieces = []
    for window in plan_all_windows(frames, policy):
        result = codec.decode_windows([window])[0]
        if isinstance(result, BaseException):
            raise result
        pieces.append(np.frombuffer(result, dtype=np.int16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def seam_error(
    codec: SnacCodec, frames: np.ndarray, policy: Any, offline: np.ndarray | None = None
) -> dict[str, float]:
    """Streamed vs offline decode of the same codes (use a codec with noise off).

    Returns ``max_abs`` (int16 LSB), ``max_abs_rel_peak`` (max error / offline peak),
    ``rms_rel`` (RMS error / RMS signal) and the sample counts of both decodes. ``offline``: the
    offline int16 decode of ``frames`` if already computed.
    """
    if offline is None:
        offline = codec.decode_offline(frames)
    offline = offline.astype(np.float64)
    streamed = stream_decode_sync(codec, frames, policy).astype(np.float64)
    if streamed.shape != offline.shape:
        return {"streamed_samples": streamed.size, "offline_samples": offline.size}
    err = np.abs(streamed - offline)
    peak = float(np.abs(offline).max()) or 1.0
    rms = float(np.sqrt(np.mean(offline**2))) or 1.0
    return {
        "streamed_samples": float(streamed.size),
        "offline_samples": float(offline.size),
        "max_abs": float(err.max()),
        "max_abs_rel_peak": float(err.max()) / peak,
        "rms_rel": float(np.sqrt(np.mean(err**2))) / rms,
    }


def decode_throughput(
    codec: SnacCodec,
    *,
    streams: int,
    window_frames: int,
    windows_per_stream: int,
    batched: bool,
    hop_frames: int = 1,
) -> dict[str, float]:
    """Windows/s and audio-seconds/s for ``streams`` concurrent streams of steady windows.

    ``batched``: each round decodes all streams' windows as one batch (what the worker does);
    otherwise one window at a time. Each window emits ``hop_frames`` frames of audio.
    """
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4096, size=(streams, window_frames, 7))
    codec.decode_frames_batch(codes[:1])  # warm the shape
    if batched:
        codec.decode_frames_batch(codes)
    started = time.perf_counter()
    for _ in range(windows_per_stream):
        if batched:
            codec.decode_frames_batch(codes)
        else:
            for s in range(streams):
                codec.decode_frames_batch(codes[s : s + 1])
    elapsed = time.perf_counter() - started
    windows = streams * windows_per_stream
    return {
        "streams": float(streams),
        "windows_per_s": windows / elapsed,
        "audio_s_per_s": windows * hop_frames * SAMPLES_PER_FRAME / SAMPLE_RATE_HZ / elapsed,
        "elapsed_s": elapsed,
    }
