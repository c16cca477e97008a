#!/usr/bin/env python
"""What one TTS output chunk costs each audio format's encoder on this CPU: the time an
``AudioEncoder`` call takes for one SNAC frame of audio (2048 samples at 24 kHz, 85 ms), the
first chunk of a turn (the codec stream opens) and the turn's tail (``finish``); medians over
turns of noise-like audio. The FFmpeg formats (mp3, opus, G.711) run on ``EncodeService``
threads, PCM and WAV in the session core (docs/tts.md, "Encoding off the event loop").

    python scripts/bench/encode.py [--turns 20] [--chunks 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from orpheus_tts.audio_format import MODEL_RATE_HZ, AudioEncoder, AudioFormat

CHUNK_SAMPLES = 2048  # one SNAC frame at 24 kHz
# (format, output rate): each format at the rate a client most often asks for it.
CASES = (
    (AudioFormat.PCM_S16LE, 24000),
    (AudioFormat.WAV, 24000),
    (AudioFormat.PCM_F32LE, 24000),
    (AudioFormat.MULAW, 8000),
    (AudioFormat.ALAW, 8000),
    (AudioFormat.MP3, 24000),
    (AudioFormat.MP3, 44100),  # Fish's default
    (AudioFormat.OPUS, 24000),
    (AudioFormat.OPUS, 48000),
)


def _ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 3)


def measure(fmt: AudioFormat, rate: int, turns: int, chunks: int) -> dict:
    rng = np.random.default_rng(0)
    encoder = AudioEncoder(fmt, rate)
    first, steady, tail = [], [], []
    for _ in range(turns):
        for i in range(chunks):
            pcm = (rng.standard_normal(CHUNK_SAMPLES) * 3000).astype("<i2").tobytes()
            t0 = time.perf_counter()
            encoder.encode(pcm)
            (first if i == 0 else steady).append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        encoder.finish()
        tail.append(time.perf_counter() - t0)
    return {
        "format": f"{fmt.value} {rate // 1000 if rate % 1000 == 0 else rate / 1000} kHz",
        "chunk_ms": _ms(steady),
        "chunk_p95_ms": round(float(np.percentile(steady, 95)) * 1000, 3),
        "first_chunk_ms": _ms(first),
        "finish_ms": _ms(tail),
        "offloaded": encoder.offloaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--chunks", type=int, default=24, help="chunks per turn")
    args = parser.parse_args()
    assert MODEL_RATE_HZ == 24000, "CHUNK_SAMPLES is one SNAC frame at 24 kHz"
    print("| format | chunk (median / p95) | first chunk of a turn | turn's tail | where |")
    print("|---|---:|---:|---:|---|")
    for fmt, rate in CASES:
        r = measure(fmt, rate, args.turns, args.chunks)
        where = "encode worker" if r["offloaded"] else "session core"
        print(
            f"| {r['format']} | {r['chunk_ms']} / {r['chunk_p95_ms']} ms | "
            f"{r['first_chunk_ms']} ms | {r['finish_ms']} ms | {where} |"
        )


if __name__ == "__main__":
    main()
