#!/usr/bin/env python
"""Benchmark the Orpheus TTS WebSocket: N concurrent sessions, latency and real-time factor.

    python scripts/bench/tts.py --dummy-weights             # local CPU server, random weights
    python scripts/bench/tts.py --url wss://.../websocket --api-key ... --sessions 1,8,24

Per concurrency level it reports, over all sessions:
* time to first audio: from the first sentence being complete (the word after it sent) to the
  first audio byte received;
* inter-chunk gap p99: the largest pauses between consecutive audio frames of one session;
* real-time factor: wall time first word → last audio, divided by the audio duration.

``--turns`` runs the event protocol instead (one socket per conversation): time from ``flush``
to the turn's first audio over 20 turns, ``clear`` -> ``cleared`` over 20 barge-ins (and that
no audio of the cleared text came after ``cleared``), and first audio per response format.

With ``--dummy-weights`` (random model weights on CPU) the numbers measure the pipeline and
the server's overhead, not Orpheus on a GPU. The SNAC section decodes random codes with random
SNAC weights, batched across streams vs one window at a time, at 1, 4 and 16 streams, and
states how many tokens a stream needs before its first audio. Results go to a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scripts import REPO_ROOT
from scripts.bench.stats import percentile
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.tts import EventSession, TTSResult, stream_tts

logger = logging.getLogger("bench_tts")

BENCH_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Streaming speech starts while the text is still arriving, one word at a time. "
    "Every sentence becomes one generation, and the next one starts before the last is sent."
)
SNAC_STREAM_COUNTS = (1, 4, 16)
SNAC_WINDOWS_PER_STREAM = 3
# The reference Orpheus decoder waits for 28 tokens (4 frames) before its first audio.
REFERENCE_TOKENS_BEFORE_FIRST_AUDIO = 28


def summarize(results: Sequence[TTSResult], wall_s: float) -> dict[str, Any]:
    """Aggregate one concurrency level's sessions into latency / gap / RTF figures (ms, ratios)."""
    ok = [r for r in results if r.close_code == 1000 and r.error is None and r.frame_times]
    ttfa = [r.time_to_first_audio_s * 1000 for r in ok if r.time_to_first_audio_s is not None]
    gaps = [
        (b - a) * 1000 for r in ok for a, b in zip(r.frame_times, r.frame_times[1:], strict=False)
    ]
    rtf = [r.real_time_factor for r in ok if r.real_time_factor is not None]
    return {
        "sessions": len(results),
        "ok": len(ok),
        "errors": [r.error for r in results if r.error],
        "wall_s": round(wall_s, 3),
        "audio_s_total": round(sum(r.audio_s for r in ok), 3),
        "ttfa_ms_p50": _round(percentile(ttfa, 50)),
        "ttfa_ms_p90": _round(percentile(ttfa, 90)),
        "ttfa_ms_max": _round(max(ttfa) if ttfa else None),
        "gap_ms_p50": _round(percentile(gaps, 50)),
        "gap_ms_p99": _round(percentile(gaps, 99)),
        "gap_ms_max": _round(max(gaps) if gaps else None),
        "rtf_p50": _round(percentile(rtf, 50), 3),
        "rtf_max": _round(max(rtf) if rtf else None, 3),
        "frames": sum(len(r.frame_times) for r in ok),
    }


_SERVER_HISTOGRAMS = {
    # session: last word of the first chunk -> first audio byte sent
    "server_ttfa_ms_mean": "orpheus_time_to_first_audio_seconds",
    # engine + SNAC: generation start -> its first PCM chunk
    "server_generation_first_audio_ms_mean": "orpheus_generation_first_audio_seconds",
}


def scrape(metrics_url: str | None) -> dict[str, float]:
    """Sums and counts of the server's latency histograms (empty without a metrics URL)."""
    if not metrics_url:
        return {}
    response = httpx.get(metrics_url, timeout=10, follow_redirects=True)  # /metrics/
    response.raise_for_status()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name.endswith(("_seconds_sum", "_seconds_count")) and not sample.labels
    }


def server_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean of each histogram over one level (ms), from scrapes before and after it."""
    means: dict[str, float | None] = {}
    for key, name in _SERVER_HISTOGRAMS.items():
        count = after.get(f"{name}_count", 0.0) - before.get(f"{name}_count", 0.0)
        total = after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0)
        means[key] = _round(total / count * 1000) if count else None
    return means


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


async def run_level(
    url: str,
    sessions: int,
    text: str,
    config: dict[str, Any],
    api_key: str | None,
    word_interval_s: float,
) -> dict[str, Any]:
    """``sessions`` concurrent sessions of the same text."""
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            stream_tts(url, text, config=config, api_key=api_key, word_interval_s=word_interval_s)
            for _ in range(sessions)
        )
    )
    return summarize(results, time.monotonic() - started)


def snac_section() -> dict[str, Any]:
    """Batched vs one-at-a-time SNAC decode throughput, and tokens before the first audio."""
    import torch

    from orpheus_tts.settings import OrpheusSettings
    from orpheus_tts.snac_decoder import SnacCodec, build_snac, decode_throughput

    policy = OrpheusSettings().window_policy  # what the server runs
    codec = SnacCodec(build_snac(None, noise=False), device="cpu")
    rows = []
    for streams in SNAC_STREAM_COUNTS:
        row: dict[str, Any] = {"streams": streams}
        for batched in (True, False):
            measured = decode_throughput(
                codec,
                streams=streams,
                window_frames=policy.window_frames,
                windows_per_stream=SNAC_WINDOWS_PER_STREAM,
                batched=batched,
                hop_frames=policy.hop_frames,
            )
            key = "batched" if batched else "one_at_a_time"
            row[f"{key}_windows_per_s"] = round(measured["windows_per_s"], 1)
            row[f"{key}_audio_s_per_s"] = round(measured["audio_s_per_s"], 2)
        row["speedup"] = round(row["batched_windows_per_s"] / row["one_at_a_time_windows_per_s"], 2)
        rows.append(row)
    return {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "window_policy": {
            "left_context_frames": policy.left_context_frames,
            "hop_frames": policy.hop_frames,
            "right_context_frames": policy.right_context_frames,
            "window_frames": policy.window_frames,
        },
        "tokens_before_first_audio": policy.tokens_before_first_audio,
        "reference_tokens_before_first_audio": REFERENCE_TOKENS_BEFORE_FIRST_AUDIO,
        "throughput": rows,
    }


TURNS = 20
BARGE_INS = 20
FORMAT_SESSIONS = 5
FORMATS = (("pcm_s16le", 24000), ("pcm_f32le", 24000), ("wav", 24000), ("mulaw", 8000),
           ("alaw", 8000), ("mp3", 24000), ("opus", 48000))  # fmt: skip
LONG_TEXT = "A long answer that keeps the engine busy for quite a while, so it can be cut off."


def _ms(values: list[float], q: float) -> float | None:
    return _round(percentile([v * 1000 for v in values], q)) if values else None


async def turns_section(url: str, config: dict[str, Any], api_key: str | None) -> dict[str, Any]:
    """The event protocol's latencies, measured by the client (see the module docstring)."""
    async with await EventSession.open(url, config, api_key) as session:
        flush_waits = []
        for turn in range(TURNS):
            await session.say(f"Turn number {turn} is a short one.")
            sent = await session.control("flush", id=turn)
            flush_waits.append(await session.wait_audio(sent) - sent)
            await session.wait_for("flush_done")
        clear_waits, leaked = [], 0
        await session.control("update", max_tokens=2000)  # long generations to cut off
        for n in range(BARGE_INS):
            await session.say(LONG_TEXT)
            await session.wait_audio(await session.control("flush", id=f"long-{n}"))
            sent = await session.control("clear", id=n)
            cleared = await session.wait_for("cleared")
            at = next(r.at for r in reversed(session.received) if r.event is cleared)
            clear_waits.append(at - sent)
            await asyncio.sleep(0.2)  # anything of the cleared text would arrive now
            after = session.received[[r.event for r in session.received].index(cleared) + 1 :]
            leaked += sum(len(r.audio) for r in after if r.audio)
    formats = []
    for fmt, rate in FORMATS:
        waits = []
        for _ in range(FORMAT_SESSIONS):
            format_config = {**config, "response_format": fmt, "sample_rate": rate}
            async with await EventSession.open(url, format_config, api_key) as session:
                await session.say("First audio in every format.")
                sent = await session.control("flush")
                waits.append(await session.wait_audio(sent) - sent)
        formats.append({"format": fmt, "rate": rate, "first_audio_ms_p50": _ms(waits, 50)})
    return {
        "turns": TURNS,
        "flush_to_first_audio_ms_p50": _ms(flush_waits, 50),
        "flush_to_first_audio_ms_p95": _ms(flush_waits, 95),
        "barge_ins": BARGE_INS,
        "clear_to_cleared_ms_p50": _ms(clear_waits, 50),
        "clear_to_cleared_ms_p95": _ms(clear_waits, 95),
        "audio_bytes_after_cleared": leaked,
        "formats": formats,
    }


def print_turns(turns: dict[str, Any]) -> None:
    print(
        f"\n{turns['turns']} turns on one socket: flush -> first audio p50 "
        f"{turns['flush_to_first_audio_ms_p50']} ms, p95 {turns['flush_to_first_audio_ms_p95']} ms"
    )
    print(
        f"{turns['barge_ins']} barge-ins: clear -> cleared p50 {turns['clear_to_cleared_ms_p50']}"
        f" ms, p95 {turns['clear_to_cleared_ms_p95']} ms; audio bytes of cleared text after"
        f" cleared: {turns['audio_bytes_after_cleared']}"
    )
    print("| format | rate | flush -> first audio p50 ms |\n|---|---:|---:|")
    for row in turns["formats"]:
        print(f"| {row['format']} | {row['rate']} | {row['first_audio_ms_p50']} |")


@contextlib.contextmanager
def local_server(dummy_weights: bool) -> Iterator[Any]:
    """scripts/local/serve.py on a free port (the same runner the e2e tests use)."""
    from scripts.local.spawn import TTS_ADMISSION_OFF, serve_truss

    timeout_s = float(os.environ.get("SERVE_START_TIMEOUT_S", 300))
    # Admission control off: the benchmark measures what happens past the knee.
    with serve_truss(
        "orpheus_tts_truss",
        dummy_weights=dummy_weights,
        start_timeout_s=timeout_s,
        env=TTS_ADMISSION_OFF,
    ) as served:
        yield served


def print_table(report: dict[str, Any]) -> None:
    print(
        "\n| sessions | ok | TTFA p50 ms | TTFA p90 ms | gap p50 ms | gap p99 ms | RTF p50 "
        "| RTF max | server TTFA mean ms | engine+SNAC first PCM mean ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in report["levels"]:
        print(
            f"| {level['sessions']} | {level['ok']} | {level['ttfa_ms_p50']} | "
            f"{level['ttfa_ms_p90']} | {level['gap_ms_p50']} | {level['gap_ms_p99']} | "
            f"{level['rtf_p50']} | {level['rtf_max']} | {level.get('server_ttfa_ms_mean')} | "
            f"{level.get('server_generation_first_audio_ms_mean')} |"
        )
    snac = report.get("snac")
    if snac:
        print(
            f"\nSNAC decode (CPU, {snac['torch_threads']} threads, window "
            f"{snac['window_policy']['window_frames']} frames):"
        )
        print("| streams | batched windows/s | one-at-a-time windows/s | speedup |")
        print("|---:|---:|---:|---:|")
        for row in snac["throughput"]:
            print(
                f"| {row['streams']} | {row['batched_windows_per_s']} | "
                f"{row['one_at_a_time_windows_per_s']} | {row['speedup']} |"
            )
        print(
            f"tokens before first audio: {snac['tokens_before_first_audio']} "
            f"(reference decoder: {snac['reference_tokens_before_first_audio']})"
        )


async def run_levels(
    url: str, args: argparse.Namespace, config: dict[str, Any], metrics_url: str | None
) -> list[dict]:
    levels = []
    for sessions in args.sessions:
        logger.info("running %d concurrent session(s)", sessions)
        before = scrape(metrics_url)
        level = await run_level(
            url, sessions, args.text, config, args.api_key, args.word_interval_ms / 1000
        )
        level.update(server_means(before, scrape(metrics_url)))
        logger.info("%s", level)
        levels.append(level)
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="WebSocket URL of a running server")
    target.add_argument(
        "--dummy-weights", action="store_true", help="start a local CPU server with random weights"
    )
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    parser.add_argument(
        "--metrics-url", help="the server's /metrics (local runs): adds server-side latencies"
    )
    parser.add_argument(
        "--sessions",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 4, 8],
        help="comma-separated concurrency levels",
    )
    parser.add_argument("--text", default=BENCH_TEXT)
    parser.add_argument("--voice", default="tara")
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--word-interval-ms", type=float, default=0.0)
    parser.add_argument("--skip-snac", action="store_true", help="skip the SNAC decode section")
    parser.add_argument("--turns", action="store_true", help="the event protocol's latencies")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_results" / "tts.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    config = {"voice": args.voice, "max_tokens": args.max_tokens, "buffer_size": args.buffer_size}
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "dummy_weights": bool(args.dummy_weights),
        "text_chars": len(args.text),
        "config": config,
        "word_interval_ms": args.word_interval_ms,
    }
    if args.turns:
        config["max_tokens"] = min(args.max_tokens, 140)  # short turns (~1.7 s of audio)
        if args.url:
            report["turns"] = asyncio.run(turns_section(args.url, config, args.api_key))
        else:
            with local_server(dummy_weights=True) as served:
                report["turns"] = asyncio.run(turns_section(served.ws_url, config, None))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print_turns(report["turns"])
        return 0 if report["turns"]["audio_bytes_after_cleared"] == 0 else 1
    if args.url:
        report["url"] = args.url
        report["levels"] = asyncio.run(run_levels(args.url, args, config, args.metrics_url))
    else:
        with local_server(dummy_weights=True) as served:
            report["url"] = "local serve.py --dummy-weights"
            metrics_url = f"{served.http_url}/metrics"
            report["levels"] = asyncio.run(run_levels(served.ws_url, args, config, metrics_url))
    if not args.skip_snac:
        report["snac"] = snac_section()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nwritten: {args.out}")
    return 0 if all(level["ok"] == level["sessions"] for level in report["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
