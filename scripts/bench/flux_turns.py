#!/usr/bin/env python
"""How soon a Deepgram Flux client hears that the user started speaking: ``StartOfTurn`` (the
barge-in signal: pipecat interrupts the bot on it, LiveKit emits START_OF_SPEECH) and the turn's
first words, each measured from the clip's first voiced sample.

    python scripts/bench/flux_turns.py                      # starts the local truss (tiny.en)
    python scripts/bench/flux_turns.py --corpus samples/real_heldout --url ws://…/v1/websocket

Streams every ``*.wav`` of ``--corpus`` over the Flux dialect (``/v2/listen``'s query: the
clients' ``model=flux-general-en&encoding=linear16&sample_rate=16000``), one clip at a time, at
real-time pace in the project client's 32 ms frames, after ``--lead`` seconds of digital
silence (so the speech begins mid-stream, as a reply does), then ``CloseStream``. The first
voiced sample is ``conversation.voiced_extent``'s (energy within 35 dB of the clip's loudest and
10 dB over its background). Arrival times are the client's, so they include the VAD's own delay,
the server's queueing and, for the first words, the partial's decode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import websockets

from scripts import REPO_ROOT
from scripts.bench.conversation import voiced_extent
from scripts.bench.report import LOCAL_WHISPER, machine
from scripts.bench.stats import percentile
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.connect import open_websocket
from scripts.clients.stt import CLIENT_RATE_HZ, FRAME_SAMPLES, frames_of, read_wav

DEFAULT_CORPUS = REPO_ROOT / "samples" / "real"
DEFAULT_OUT = REPO_ROOT / "bench_results" / "flux_turns.json"
FLUX_QUERY = "model=flux-general-en&encoding=linear16&sample_rate=16000"
LEAD_S = 1.0  # silence before the clip
CLOSE_WAIT_S = 30.0  # after CloseStream, for the server's close


def flux_url(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{FLUX_QUERY}"


def first_arrivals(arrivals: list[tuple[float, dict]]) -> dict[str, float | None]:
    """The first ``StartOfTurn`` and the first TurnInfo with words (any event), in seconds."""
    infos = [(t, m) for t, m in arrivals if m.get("type") == "TurnInfo"]
    start = next((t for t, m in infos if m["event"] == "StartOfTurn"), None)
    words = next((t for t, m in infos if m.get("transcript")), None)
    return {"start_of_turn_s": start, "first_words_s": words}


async def one_clip(url: str, wav: Path, lead_s: float, api_key: str | None) -> dict:
    samples = read_wav(wav)
    onset_s = lead_s + voiced_extent(samples)[0] / CLIENT_RATE_HZ
    audio = np.concatenate([np.zeros(round(lead_s * CLIENT_RATE_HZ), samples.dtype), samples])
    frames = frames_of(audio)
    frame_s = FRAME_SAMPLES / CLIENT_RATE_HZ
    arrivals: list[tuple[float, dict]] = []
    async with await open_websocket(flux_url(url), api_key) as ws:
        t0 = time.monotonic()

        async def send() -> None:
            for i, frame in enumerate(frames):  # paced against the wall clock
                await asyncio.sleep(max(0.0, t0 + i * frame_s - time.monotonic()))
                await ws.send(frame)
            await ws.send(json.dumps({"type": "CloseStream"}))

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(len(frames) * frame_s + CLOSE_WAIT_S):
                async for raw in ws:
                    if isinstance(raw, str):
                        arrivals.append((time.monotonic() - t0, json.loads(raw)))
        except websockets.ConnectionClosed:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    first = first_arrivals(arrivals)
    return {
        "clip": wav.stem,
        "onset_s": round(onset_s, 3),
        **{k: None if v is None else round(v - onset_s, 3) for k, v in first.items()},
        "events": [m.get("event", m.get("type")) for _, m in arrivals],
        "close_code": ws.close_code,
    }


def summarise(clips: list[dict]) -> dict:
    out: dict = {"clips": len(clips)}
    for key in ("start_of_turn_s", "first_words_s"):
        values = [c[key] for c in clips if c[key] is not None]
        out[key] = {
            "n": len(values),
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="websocket URL; default: start the local whisper truss")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--lead", type=float, default=LEAD_S, help="seconds of silence first")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    args = parser.parse_args()
    wavs = sorted(args.corpus.glob("*.wav"))
    if not wavs:
        raise SystemExit(f"no *.wav in {args.corpus}")

    async def run(url: str) -> list[dict]:
        return [await one_clip(url, wav, args.lead, args.api_key) for wav in wavs]

    if args.url:
        clips = asyncio.run(run(args.url))
    else:
        from scripts.local.spawn import ADMISSION_OFF, serve_truss

        with serve_truss("whisper_streaming_truss", env=ADMISSION_OFF) as server:
            clips = asyncio.run(run(server.ws_url))
    summary = summarise(clips)
    report = {
        "machine": machine(),
        "url": args.url or LOCAL_WHISPER,
        "corpus": str(args.corpus),
        "summary": summary,
        "clips": clips,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("| from the first voiced sample to | clips | p50 | p95 |\n|---|---:|---:|---:|")
    for key, label in (("start_of_turn_s", "StartOfTurn"), ("first_words_s", "first words")):
        s = summary[key]
        print(f"| {label} | {s['n']} of {len(clips)} | {s['p50']} s | {s['p95']} s |")
    print(f"load average at the end {report['machine']['load_avg_at_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
