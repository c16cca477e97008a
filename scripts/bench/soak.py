#!/usr/bin/env python
"""Reliability soak of one truss on the real Truss server: fuzz, disconnect storm, overload, RSS.

Usage: ``python scripts/bench/soak.py {whisper,orpheus} [--fuzz 500] [--storm 300] [--offered N]
[--sequential 1000] [--url ws://…]`` (``make soak``; not part of CI: minutes, not seconds).

Starts the truss with ``scripts/local/serve.py`` (CPU stand-in; orpheus with dummy weights) unless
``--url`` points at a running one, and only ever talks to 127.0.0.1. Every phase is bounded in
sessions and time. After each phase it reads the server's ``/metrics`` and requires the session
gauges back at 0 within 1 s. Prints one table (and ``--json`` writes it):

- fuzz: sessions of random frames (valid, malformed, deeply nested, huge numbers, binary
  garbage, control messages) ending at random: close codes seen, 1011s, sessions not closed;
- storm: real sessions cut at random points (RST, FIN without a close frame, clean close),
  including right after end_audio / __END__ (finals and generations pending);
- bad frame -> close latency (p50 / p99 / max);
- overload: ``--offered`` real-time sessions at once: how many were admitted, how fast the rest
  got 1013, and the admitted ones' latency (STT final p95, TTS first audio p95);
- RSS after ``--sequential`` good sessions vs after the first 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from scripts import REPO_ROOT
from scripts.bench.stats import percentile
from scripts.clients.stt import CLIENT_RATE_HZ as STT_RATE
from scripts.clients.stt import FRAME_SAMPLES, read_wav
from scripts.local.spawn import serve_truss

CLOSE_WAIT_S = 60.0  # a session the server has not closed by then counts as "not closed"
GAUGE_SETTLE_S = 1.0
GAUGES = {
    "whisper": ("whisper_active_sessions",),
    "orpheus": ("orpheus_active_sessions", "orpheus_active_generations"),
}
TRUSS_DIRS = {"whisper": "whisper_streaming_truss", "orpheus": "orpheus_tts_truss"}
WORDS = (
    "The quick brown fox jumps over the lazy dog. Then it naps in the warm afternoon sun.".split()
)
STT_META = {
    "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
    "streaming_whisper_params": {
        "encoding": "pcm_s16le",
        "sample_rate": STT_RATE,
        "enable_partial_transcripts": True,
        "audio_language": "en",
    },
}
TTS_CONFIG = {"voice": "tara", "max_tokens": 2000, "buffer_size": 10}


@dataclass
class PhaseResult:
    name: str
    sessions: int = 0
    close_codes: Counter = field(default_factory=Counter)
    internal_errors: int = 0
    not_closed: int = 0
    gauges_after: dict[str, float] = field(default_factory=dict)
    gauges_zero_within_1s: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["close_codes"] = {str(code): n for code, n in self.close_codes.items()}
        return data


def load_speech() -> bytes:
    return read_wav(REPO_ROOT / "samples" / "speech_en.wav").tobytes()


def metrics_gauges(http_url: str, names: tuple[str, ...]) -> dict[str, float]:
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        for name in names:
            if line.startswith(name + " ") or line.startswith(name + "{"):
                values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


async def settle(http_url: str, kind: str, result: PhaseResult) -> None:
    """The session gauges must read 0 within GAUGE_SETTLE_S of the phase's last session."""
    deadline = time.monotonic() + GAUGE_SETTLE_S
    while True:
        gauges = await asyncio.to_thread(metrics_gauges, http_url, GAUGES[kind])
        if all(v == 0 for v in gauges.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    result.gauges_after = gauges
    result.gauges_zero_within_1s = all(v == 0 for v in gauges.values())


async def drain(ws: ClientConnection, timeout_s: float = CLOSE_WAIT_S) -> tuple[int | None, list]:
    """Read until the server closes; (close code or None if it never closed, messages)."""
    messages = []
    try:
        async with asyncio.timeout(timeout_s):
            async for message in ws:
                messages.append(message)
    except TimeoutError:
        return None, messages
    except ConnectionClosed:
        pass
    return ws.close_code, messages


# -- fuzz ---------------------------------------------------------------------------------------
def fuzz_frame(rng: random.Random, kind: str, speech: bytes) -> str | bytes:
    choice = rng.randrange(14)
    if choice == 0:
        return "[" * rng.choice([50, 2000, 100_000]) + "]" * 3
    if choice == 1:
        return json.dumps({"max_tokens": 1}).replace("1", "9" * rng.choice([10, 5000]))
    if choice == 2:
        return bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 1024])))
    if choice == 3:
        return rng.choice(['{"type": "bogus"}', "{", "null", "[]", '"x"', "\u0000", "🙂" * 10])
    if choice == 4:
        return json.dumps({"type": rng.choice(["end_audio", "health_check"])})
    if choice == 5:
        return "x" * rng.choice([10, 4096, 5000])
    if choice == 6:
        return rng.choice(["__END__", " ", ""])
    if kind == "whisper":
        if choice < 10:
            start = rng.randrange(0, len(speech) - 4096) & ~1
            return speech[start : start + FRAME_SAMPLES * 2 * rng.choice([1, 4])]
        return json.dumps(STT_META)
    if choice < 11:
        return rng.choice(WORDS)
    return json.dumps(TTS_CONFIG)


async def fuzz_session(url: str, kind: str, rng: random.Random, speech: bytes) -> int | None:
    try:
        async with connect(url, max_size=None, open_timeout=30) as ws:
            if rng.random() < 0.7:  # mostly a valid first frame, so later states get fuzzed too
                await ws.send(json.dumps(STT_META if kind == "whisper" else TTS_CONFIG))
            for _ in range(rng.randrange(1, 40)):
                await ws.send(fuzz_frame(rng, kind, speech))
            ending = rng.randrange(4)
            if ending == 0:
                return None  # abrupt: the context manager closes cleanly; not a server fault
            if ending == 1:
                ws.transport.abort()
                return None
            await ws.send(json.dumps({"type": "end_audio"}) if kind == "whisper" else "__END__")
            code, _ = await drain(ws)
            return code if code is not None else -1
    except (ConnectionClosed, OSError, InvalidStatus):
        return 0


# Fuzzed sessions at once: within the CPU stand-in's admission capacity (6 STT, 2 TTS), so that
# the sessions are fuzzed rather than refused.
FUZZ_CONCURRENCY = {"whisper": 6, "orpheus": 2}


async def run_fuzz(url: str, http: str, kind: str, n: int, seed: int) -> PhaseResult:
    result = PhaseResult("fuzz", n)
    speech = load_speech()
    rng = random.Random(seed)
    sem = asyncio.Semaphore(FUZZ_CONCURRENCY[kind])

    async def one(i: int) -> None:
        async with sem:
            code = await fuzz_session(url, kind, random.Random(rng.random() + i), speech)
            result.notes["client_ended"] = result.notes.get("client_ended", 0) + (code is None)
            if code == -1:
                result.not_closed += 1
            elif code:
                result.close_codes[code] += 1
                result.internal_errors += code == 1011

    await asyncio.gather(*(one(i) for i in range(n)))
    await settle(http, kind, result)
    return result


# -- disconnect storm ---------------------------------------------------------------------------
STORM_SPEED = 2.0  # audio at 2x real time: 3 sessions load tiny.en about as 6 real-time ones
STORM_CONCURRENCY = 3


async def storm_session(url: str, kind: str, rng: random.Random, speech: bytes) -> str:
    """A good session cut at a random point by a random kind of disconnect; "refused" if the
    server answered 1013 before the cut."""
    how = rng.choice(["rst", "fin", "clean"])
    try:
        async with connect(url, max_size=None, open_timeout=30) as ws:
            if kind == "whisper":
                await ws.send(json.dumps(STT_META))
                frames = rng.randrange(0, len(speech) // (FRAME_SAMPLES * 2))
                for i in range(frames):
                    await ws.send(speech[i * FRAME_SAMPLES * 2 : (i + 1) * FRAME_SAMPLES * 2])
                    await asyncio.sleep(FRAME_SAMPLES / STT_RATE / STORM_SPEED)
                if rng.random() < 0.5:  # cut right after end_audio: finals pending
                    await ws.send(json.dumps({"type": "end_audio"}))
            else:
                await ws.send(json.dumps(TTS_CONFIG))
                for word in WORDS[: rng.randrange(0, len(WORDS))]:
                    await ws.send(word)
                if rng.random() < 0.6:  # mid-generation
                    await ws.send("__END__")
            await asyncio.sleep(rng.uniform(0, 0.4))
            if ws.close_code == 1013:
                return "refused"
            if how == "rst":
                ws.transport.abort()
            elif how == "fin":
                ws.transport.close()
            else:
                await ws.close()
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == 1013:
            return "refused"
        raise
    return how


async def run_storm(url: str, http: str, kind: str, n: int, seed: int) -> PhaseResult:
    """Until ``n`` admitted sessions were cut (at most 3n attempts)."""
    result = PhaseResult("storm", n)
    speech = load_speech()
    rng = random.Random(seed)
    sem = asyncio.Semaphore(STORM_CONCURRENCY)
    kinds: Counter = Counter()

    async def one(i: int) -> None:
        async with sem:
            if sum(kinds[k] for k in ("rst", "fin", "clean")) >= n:
                return
            try:
                kinds[await storm_session(url, kind, random.Random(rng.random() + i), speech)] += 1
            except (ConnectionClosed, OSError, InvalidStatus):
                kinds["failed"] += 1

    await asyncio.gather(*(one(i) for i in range(3 * n)))
    result.sessions = sum(kinds.values())
    result.notes["cuts"] = dict(kinds)
    await settle(http, kind, result)
    return result


# -- bad frame -> close latency ------------------------------------------------------------------
async def run_error_latency(url: str, http: str, kind: str, n: int) -> PhaseResult:
    result = PhaseResult("bad frame -> close", n)
    times = []
    for i in range(n):
        async with connect(url, open_timeout=30) as ws:
            bad = ["{not json", "[" * 5000, b"\x00\x01"][i % 3]
            started = time.monotonic()
            await ws.send(bad)
            code, _ = await drain(ws, 5)
            times.append((time.monotonic() - started) * 1000)
            result.close_codes[code] += 1
            result.internal_errors += code == 1011
    result.notes.update(
        p50_ms=round(percentile(times, 50), 1),
        p99_ms=round(percentile(times, 99), 1),
        max_ms=round(max(times), 1),
    )
    await settle(http, kind, result)
    return result


# -- overload ------------------------------------------------------------------------------------
async def overload_session(url: str, kind: str, speech: bytes) -> dict[str, Any]:
    opened = time.monotonic()
    try:
        return await _overload_session(url, kind, speech, opened)
    except ConnectionClosed as exc:  # closed before we were done sending: refused, most likely
        code = exc.rcvd.code if exc.rcvd is not None else None
        return {"code": code, "refused": code == 1013, "refused_after_s": time.monotonic() - opened}


async def _overload_session(url: str, kind: str, speech: bytes, opened: float) -> dict[str, Any]:
    async with connect(url, max_size=None, open_timeout=30) as ws:
        if kind == "whisper":
            await ws.send(json.dumps(STT_META))
            refused_at = 0.0

            async def read_all() -> tuple[int | None, list]:
                nonlocal refused_at
                code, messages = await drain(ws, 120)
                refused_at = time.monotonic()
                return code, messages

            reader = asyncio.create_task(read_all())
            frame_s = FRAME_SAMPLES / STT_RATE
            start = time.monotonic()
            n = len(speech) // (FRAME_SAMPLES * 2)
            try:
                for i in range(n):
                    await ws.send(speech[i * FRAME_SAMPLES * 2 : (i + 1) * FRAME_SAMPLES * 2])
                    await asyncio.sleep(max(0.0, start + (i + 1) * frame_s - time.monotonic()))
                    if reader.done():
                        break
                await ws.send(json.dumps({"type": "end_audio"}))
            except ConnectionClosed:
                pass
            code, messages = await reader
            first = json.loads(messages[0]) if messages and isinstance(messages[0], str) else {}
            refused = code == 1013 and first.get("type") == "error"
            return {
                "code": code,
                "refused": refused,
                "refused_after_s": refused_at - opened if refused else None,
                "retry_after": (first.get("body") or {}).get("retry_after_s"),
            }
        await ws.send(json.dumps(TTS_CONFIG))
        started = time.monotonic()
        for word in WORDS:
            await ws.send(word)
        await ws.send("__END__")
        first_audio = None
        refused = False
        try:
            async for message in ws:
                if isinstance(message, bytes) and first_audio is None:
                    first_audio = time.monotonic() - started
                elif isinstance(message, str) and '"overloaded"' in message:
                    refused = True
        except ConnectionClosed:
            pass
        return {
            "code": ws.close_code,
            "refused": refused and ws.close_code == 1013,
            "refused_after_s": time.monotonic() - opened,
            "first_audio_s": first_audio,
        }


def histogram(http_url: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram on /metrics."""
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(buckets)


def histogram_p95(before: list, after: list) -> float | None:
    """The bucket bound under which 95 % of the observations made between two reads fall."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if not total:
        return None
    return next(le for le, c in counts if c >= 0.95 * total)


async def run_overload(url: str, http: str, kind: str, offered: int) -> PhaseResult:
    result = PhaseResult(f"overload ({offered} offered)", offered)
    speech = load_speech()
    final_latency = "whisper_final_latency_seconds"
    before = await asyncio.to_thread(histogram, http, final_latency) if kind == "whisper" else []
    sessions = await asyncio.gather(
        *(overload_session(url, kind, speech) for _ in range(offered)), return_exceptions=True
    )
    ok = [s for s in sessions if isinstance(s, dict)]
    failures = Counter(type(s).__name__ for s in sessions if not isinstance(s, dict))
    refused = [s for s in ok if s["refused"]]
    admitted = [s for s in ok if not s["refused"]]
    for s in ok:
        result.close_codes[s["code"]] += 1
        result.internal_errors += s["code"] == 1011
    result.notes.update(
        admitted=len(admitted),
        refused=len(refused),
        failed=dict(failures),
        refusal_p95_ms=round(percentile([s["refused_after_s"] * 1000 for s in refused], 95), 1)
        if refused
        else None,
    )
    # Latency of the admitted sessions, from the server's own histogram where it has one.
    if kind == "whisper":
        after = await asyncio.to_thread(histogram, http, final_latency)
        # Speech end -> final sent, as the server measured it (bucket resolution).
        result.notes["admitted_final_latency_p95_le_s"] = histogram_p95(before, after)
    else:
        firsts = [s["first_audio_s"] for s in admitted if s["first_audio_s"] is not None]
        result.notes["admitted_first_audio_p50_s"] = (
            round(percentile(firsts, 50), 3) if firsts else None
        )
        result.notes["admitted_first_audio_p95_s"] = (
            round(percentile(firsts, 95), 3) if firsts else None
        )
    await settle(http, kind, result)
    return result


# -- RSS over sequential sessions ----------------------------------------------------------------
GOOD_CLIENT_ATTEMPTS = 4


async def good_session(url: str, kind: str, speech: bytes) -> int | None:
    """A short good session; like a well-behaved client it honours 1013's retry_after_s."""
    for _ in range(GOOD_CLIENT_ATTEMPTS):
        try:
            code, retry_after = await _good_session(url, kind, speech)
        except ConnectionClosed as exc:  # refused while still sending
            code = exc.rcvd.code if exc.rcvd is not None else None
            retry_after = 2.0 if code == 1013 else None
        if code != 1013 or retry_after is None:
            return code
        await asyncio.sleep(retry_after)
    return code


async def _good_session(url: str, kind: str, speech: bytes) -> tuple[int | None, float | None]:
    async with connect(url, max_size=None, open_timeout=30) as ws:
        if kind == "whisper":
            await ws.send(json.dumps(STT_META))
            for i in range(0, min(len(speech), STT_RATE * 2 * 2), FRAME_SAMPLES * 2):
                await ws.send(speech[i : i + FRAME_SAMPLES * 2])
            await ws.send(json.dumps({"type": "end_audio"}))
        else:
            await ws.send(json.dumps({**TTS_CONFIG, "max_tokens": 28}))  # 4 frames of audio
            await ws.send("Hello.")
            await ws.send("__END__")
        code, messages = await drain(ws)
        retry_after = None
        for message in messages:
            if isinstance(message, str) and '"overloaded"' in message:
                retry_after = json.loads(message)["body"].get("retry_after_s")
        return code, retry_after


async def run_sequential(url: str, http: str, kind: str, n: int, pid: int | None) -> PhaseResult:
    import psutil

    result = PhaseResult(f"{n} sequential sessions", n)
    speech = load_speech()
    rss = []
    for i in range(n):
        code = await good_session(url, kind, speech)
        result.close_codes[code] += 1
        if pid is not None and (i + 1) % max(n // 10, 1) == 0:
            rss.append(psutil.Process(pid).memory_info().rss / 2**20)
    if rss:
        result.notes.update(
            rss_mib_after_10pct=round(rss[0], 1),
            rss_mib_after_all=round(rss[-1], 1),
            growth_pct=round((rss[-1] - rss[0]) / rss[0] * 100, 1),
        )
    await settle(http, kind, result)
    return result


# -- main ----------------------------------------------------------------------------------------
def table(results: list[PhaseResult]) -> str:
    lines = [
        "| phase | sessions | close codes | 1011 | not closed | gauges 0 within 1 s | notes |",
        "|---|---:|---|---:|---:|---|---|",
    ]
    for r in results:
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(r.close_codes.items(), key=str))
        notes = ", ".join(f"{k} {v}" for k, v in r.notes.items())
        lines.append(
            f"| {r.name} | {r.sessions} | {codes} | {r.internal_errors} | {r.not_closed} "
            f"| {'yes' if r.gauges_zero_within_1s else f'NO {r.gauges_after}'} | {notes} |"
        )
    return "\n".join(lines)


async def soak(args: argparse.Namespace, url: str, http: str, pid: int | None) -> list:
    results = []
    if args.fuzz:
        results.append(await run_fuzz(url, http, args.kind, args.fuzz, args.seed))
    if args.storm:
        results.append(await run_storm(url, http, args.kind, args.storm, args.seed + 1))
    if args.bad:
        results.append(await run_error_latency(url, http, args.kind, args.bad))
    if args.offered:
        results.append(await run_overload(url, http, args.kind, args.offered))
    # After all that, a good client is still admitted.
    final = PhaseResult("good client afterwards", 1)
    final.close_codes[await good_session(url, args.kind, load_speech())] += 1
    results.append(final)
    if args.sequential:
        results.append(await run_sequential(url, http, args.kind, args.sequential, pid))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(TRUSS_DIRS))
    parser.add_argument("--url", help="a running server (ws://127.0.0.1:…/v1/websocket)")
    parser.add_argument("--fuzz", type=int, default=500)
    parser.add_argument("--storm", type=int, default=300)
    parser.add_argument("--bad", type=int, default=100, help="bad-frame latency samples")
    parser.add_argument("--offered", type=int, help="concurrent sessions (24 STT / 32 TTS)")
    parser.add_argument("--sequential", type=int, default=0, help="good sessions for RSS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.offered is None:
        args.offered = 24 if args.kind == "whisper" else 32
    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.url.startswith(("ws://127.0.0.1", "ws://localhost")):
                parser.error("soak only talks to a server on this machine")
            url, http, pid = args.url, "http://" + args.url[5:].split("/", 1)[0], None
        else:
            served = stack.enter_context(
                serve_truss(TRUSS_DIRS[args.kind], dummy_weights=args.kind == "orpheus")
            )
            url, http, pid = served.ws_url, served.http_url, served.process.pid
        results = asyncio.run(soak(args, url, http, pid))
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.as_json() for r in results], indent=2, default=str))
    bad = any(r.internal_errors or r.not_closed or not r.gauges_zero_within_1s for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
