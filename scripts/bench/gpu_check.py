#!/usr/bin/env python
"""GPU check of the Orpheus path, on one CUDA machine with no network and no Hugging Face.

Usage: ``python scripts/bench/gpu_check.py [--out bench_results/gpu_check.json]`` (``make gpu-check``).

Needs torch (CUDA), transformers and numpy, as a CUDA machine usually has them; the rest is pure
Python and travels as wheels (``make gpu-wheels`` puts snac, einops and prometheus-client in
``.gpu_wheels/``; install them there with ``pip install --no-index --no-deps .gpu_wheels/*``).

What it measures, in this order, and writes into one JSON file:
  (a) SNAC decode on CUDA against the same decode on CPU (random weights of the 24 kHz
      architecture, noise off): max abs difference in [-1, 1] units and in int16 LSB;
  (b) batched SNAC windows/s at 1/8/32/64 streams, eager and with torch.compile(dynamic=True);
  (c) the Orpheus pipeline through ``Synthesizer``: the transformers engine with random weights
      of Orpheus 3B's shape in bf16 (Llama 3.2 3B layout, Orpheus's vocabulary), sampling
      constrained to audio tokens (a random model emits none by itself), the real SNAC
      architecture and the batched decode service, at 1/8/32 concurrent streams: time to first
      audio p50/p95 and real-time factor. Not vLLM (it cannot be carried as a wheel this size),
      not real weights: it measures the plumbing and the GPU work per stream, not voice quality.
A time budget (``--budget-s``, 450 s by default) skips what would not fit, and says so.
``--device cpu --tiny`` runs the same code small on a CPU (the test suite does, so it cannot rot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts import REPO_ROOT
from scripts.bench.stats import percentile

DEFAULT_OUT = REPO_ROOT / "bench_results" / "gpu_check.json"
DEFAULT_BUDGET_S = 450.0  # the check must finish within 8 minutes, start-up included


@dataclass(frozen=True)
class Workload:
    parity_batch: int  # windows of codes decoded on both devices
    parity_frames: int
    snac_streams: tuple[int, ...]
    snac_windows_per_stream: int
    pipeline_streams: tuple[int, ...]
    pipeline_frames: int  # audio frames per generation (24 x 2048 samples = 2.05 s at 24 kHz)


FULL = Workload(4, 32, (1, 8, 32, 64), 20, (1, 8, 32), 24)
# The same code, small: a CPU run in the test suite (every section in ~30 s on 2 cores; the full
# sizes took ~2.5 min there).
TINY = Workload(1, 8, (1, 2), 3, (1, 2), 8)
PIPELINE_TEXT = "Hello there, this is a check of the streaming speech pipeline on a GPU."
MAX_MODEL_LEN = 1024


class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def environment(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def snac_parity(device: str, work: Workload) -> dict[str, Any]:
    """(a) The same codes through the same random SNAC on the device and on the CPU."""
    import numpy as np

    from orpheus_tts.snac_decoder import INT16_FULL_SCALE, SnacCodec, build_snac

    codes = np.random.default_rng(0).integers(
        0, 4096, size=(work.parity_batch, work.parity_frames, 7)
    )
    ref = SnacCodec(build_snac(None, device="cpu", noise=False, seed=0), device="cpu")
    dev = SnacCodec(build_snac(None, device=device, noise=False, seed=0), device=device)
    expected = ref.decode_frames_batch(codes)
    actual = dev.decode_frames_batch(codes)
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    lsb = np.abs(
        np.round(np.clip(actual, -1, 1) * INT16_FULL_SCALE)
        - np.round(np.clip(expected, -1, 1) * INT16_FULL_SCALE)
    )
    return {
        "windows": work.parity_batch,
        "frames": work.parity_frames,
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_int16_lsb": float(lsb.max()),
        "signal_rms": float(np.sqrt(np.mean(expected.astype(np.float64) ** 2))),
    }


def snac_throughput(
    device: str,
    streams: tuple[int, ...],
    windows_per_stream: int,
    budget: Budget,
    compile_modes: tuple[bool, ...],
) -> list[dict]:
    """(b) Steady windows of every stream decoded as one batch, eager and compiled."""
    from orpheus_tts.snac_decoder import SnacCodec, build_snac, decode_throughput
    from orpheus_tts.snac_stream import WindowPolicy

    policy = WindowPolicy()
    rows = []
    for compiled in compile_modes:
        model = build_snac(None, device=device, noise=True, seed=0)
        codec = SnacCodec(model, device=device, compile=compiled)
        for n in streams:
            if budget.left() < 0:
                rows.append({"streams": n, "compile": compiled, "skipped": "time budget"})
                continue
            started = time.perf_counter()
            result = decode_throughput(
                codec,
                streams=n,
                window_frames=policy.window_frames,
                windows_per_stream=windows_per_stream,
                batched=True,
                hop_frames=policy.hop_frames,
            )
            rows.append(
                {
                    "streams": n,
                    "compile": compiled,
                    "window_frames": policy.window_frames,
                    "windows_per_s": round(result["windows_per_s"], 1),
                    "audio_s_per_s": round(result["audio_s_per_s"], 1),
                    "seconds_incl_warmup": round(time.perf_counter() - started, 2),
                }
            )
            print(f"snac streams={n} compile={compiled}: {rows[-1]}", file=sys.stderr)
    return rows


def build_llama(device: str, tiny: bool) -> Any:
    import torch

    from orpheus_tts.dummy import ORPHEUS_3B_SHAPE, build_dummy_llama, build_random_llama

    if tiny:
        return build_dummy_llama(MAX_MODEL_LEN)
    return build_random_llama(ORPHEUS_3B_SHAPE, MAX_MODEL_LEN, device=device, dtype=torch.bfloat16)


async def _one_stream(synth: Any, index: int, frames: int, started: float) -> dict[str, float]:
    from orpheus_tts.engine import SamplingParams
    from orpheus_tts.synth import GenerationStats
    from orpheus_tts.tokens import SAMPLE_RATE_HZ, SLOTS_PER_FRAME

    stats = GenerationStats()
    params = SamplingParams(max_tokens=(frames + 1) * SLOTS_PER_FRAME, seed=index)
    first = None
    async for _chunk in synth.stream(PIPELINE_TEXT, "tara", params, f"gpu-check-{index}", stats):
        if first is None:
            first = time.perf_counter() - started
    wall = time.perf_counter() - started
    audio_s = stats.pcm_bytes / 2 / SAMPLE_RATE_HZ
    return {"ttfa_s": first or wall, "wall_s": wall, "audio_s": audio_s}


async def _pipeline_level(synth: Any, n: int, frames: int) -> dict[str, Any]:
    started = time.perf_counter()
    results = await asyncio.gather(*(_one_stream(synth, i, frames, started) for i in range(n)))
    ttfa = [r["ttfa_s"] for r in results]
    rtf = [r["wall_s"] / r["audio_s"] for r in results if r["audio_s"] > 0]
    return {
        "streams": n,
        "ttfa_p50_ms": round(percentile(ttfa, 50) * 1000, 1),
        "ttfa_p95_ms": round(percentile(ttfa, 95) * 1000, 1),
        "rtf_p50": round(percentile(rtf, 50), 3) if rtf else None,
        "rtf_p95": round(percentile(rtf, 95), 3) if rtf else None,
        "audio_s_per_stream": round(sum(r["audio_s"] for r in results) / n, 3),
        "wall_s": round(time.perf_counter() - started, 2),
    }


def pipeline(
    device: str, streams: tuple[int, ...], frames: int, tiny: bool, budget: Budget
) -> dict:
    """(c) Synthesizer over the transformers engine and the SNAC decode service."""
    from orpheus_tts.dummy import build_dummy_tokenizer
    from orpheus_tts.snac_decoder import SnacCodec, SnacDecodeService, build_snac
    from orpheus_tts.snac_stream import WindowPolicy
    from orpheus_tts.synth import Synthesizer
    from orpheus_tts.transformers_engine import AudioConstraint, TransformersEngine

    if budget.left() < 0:
        return {"levels": [{"streams": n, "skipped": "time budget"} for n in streams]}
    started = time.perf_counter()
    model = build_llama(device, tiny)
    params = sum(p.numel() for p in model.parameters())
    engine = TransformersEngine(
        model,
        device=device,
        max_model_len=MAX_MODEL_LEN,
        max_concurrency=max(streams),
        constraint=AudioConstraint(max_frames=frames),
    )
    policy = WindowPolicy()
    codec = SnacCodec(build_snac(None, device=device, noise=True), device=device)
    codec.warmup(range(policy.frames_before_first_audio, policy.window_frames + 1), max(streams))
    decoder = SnacDecodeService(codec, max_batch=max(streams), max_wait_ms=2.0).start()
    synth = Synthesizer(engine, build_dummy_tokenizer(), decoder, policy)
    report: dict[str, Any] = {
        "engine": "transformers",
        "llama_params": params,
        "dtype": str(next(model.parameters()).dtype),
        "frames_per_generation": frames,
        "load_s": round(time.perf_counter() - started, 2),
        "levels": [],
    }
    try:
        asyncio.run(engine.warmup())
        for n in streams:
            if budget.left() < 0:
                report["levels"].append({"streams": n, "skipped": "time budget"})
                continue
            report["levels"].append(asyncio.run(_pipeline_level(synth, n, frames)))
            print(f"pipeline: {report['levels'][-1]}", file=sys.stderr)
    finally:
        decoder.stop()
        engine.shutdown()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny Llama and few streams (a CPU run of the code)"
    )
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    started = time.perf_counter()
    budget = Budget(args.budget_s)
    work = TINY if args.tiny else FULL
    report: dict[str, Any] = {"environment": environment(args.device)}
    report["snac_parity"] = snac_parity(args.device, work)
    print(f"snac parity: {report['snac_parity']}", file=sys.stderr)
    # torch.compile on a CPU needs minutes of C++ builds: the tiny run checks the eager path.
    compile_modes = (False,) if args.tiny else (False, True)
    report["snac_throughput"] = snac_throughput(
        args.device, work.snac_streams, work.snac_windows_per_stream, budget, compile_modes
    )
    report["pipeline"] = pipeline(
        args.device, work.pipeline_streams, work.pipeline_frames, args.tiny, budget
    )
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
