#!/usr/bin/env python
"""Words the streaming server invents from non-speech: 60 s each of digital silence, noise at
-60 dBFS, white noise at -30 dBFS and music-like tones, streamed (as fast as the server takes
them) through the local whisper truss with partials on. Target: 0 words in finals.

Usage: ``python scripts/bench/hallucinations.py [--seconds 60] [--url ws://…]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from scripts.clients.stt import CLIENT_RATE_HZ as RATE
from scripts.clients.stt import FRAME_SAMPLES, frames_of, stream, v1_metadata

FULL_SCALE = 32767
SEED = 0


def dbfs(level_db: float) -> float:
    """RMS amplitude (int16 units) of a signal at ``level_db`` dBFS."""
    return FULL_SCALE * 10 ** (level_db / 20)


def signals(seconds: float) -> dict[str, np.ndarray]:
    n = int(seconds * RATE)
    rng = np.random.default_rng(SEED)
    t = np.arange(n) / RATE
    # Music-like: a slow arpeggio of harmonic tones (A minor), notes of 0.4 s with decay.
    notes = [220.0, 261.63, 329.63, 440.0, 329.63, 261.63]
    note_len = int(0.4 * RATE)
    tones = np.zeros(n)
    for start in range(0, n, note_len):
        f = notes[(start // note_len) % len(notes)]
        seg = t[start : start + note_len] - t[start]
        env = np.exp(-3 * seg)
        tones[start : start + note_len] = env * (
            np.sin(2 * np.pi * f * seg) + 0.5 * np.sin(4 * np.pi * f * seg)
        )
    tones *= dbfs(-20) / max(np.sqrt(np.mean(tones**2)), 1e-9)
    return {
        "digital silence": np.zeros(n),
        "noise -60 dBFS": rng.standard_normal(n) * dbfs(-60),
        "white noise -30 dBFS": rng.standard_normal(n) * dbfs(-30),
        "music-like tones -20 dBFS": tones,
    }


async def words_in(url: str, samples: np.ndarray) -> tuple[int, list[str]]:
    pcm = np.clip(np.round(samples), -FULL_SCALE, FULL_SCALE).astype(np.int16)
    result = await stream(
        url, frames_of(pcm), v1_metadata(), frame_s=FRAME_SAMPLES / RATE, realtime=False
    )
    finals = [m["transcript"] for m in result.finals if m["transcript"].strip()]
    return sum(len(f.split()) for f in finals), finals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--url")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    def run(url: str) -> dict[str, dict]:
        report = {}
        for name, samples in signals(args.seconds).items():
            count, finals = asyncio.run(words_in(url, samples))
            report[name] = {"words": count, "finals": finals}
            print(f"| {name} | {args.seconds:.0f} s | {count} | {' / '.join(finals)[:80]} |")
        return report

    print("| signal | length | words in finals | finals |\n|---|---:|---:|---|")
    if args.url:
        report = run(args.url)
    else:
        from scripts.local.spawn import ADMISSION_OFF, serve_truss

        with serve_truss("whisper_streaming_truss", env=ADMISSION_OFF) as served:
            report = run(served.ws_url)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0 if all(r["words"] == 0 for r in report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
