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

Good, overload and storm sessions are the protocol clients' (scripts/clients/stt.py, tts.py);
every socket opens through scripts/clients/connect.py. What differs between the trusses is in
one table, ``TRUSSES``; ``/metrics`` is read with prometheus_client's parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from orpheus_tts.schema import END_OF_INPUT
from scripts import REPO_ROOT
from scripts.bench.stats import percentile
from scripts.clients import stt
from scripts.clients.connect import HandshakeRejected, http_client, open_websocket
from scripts.clients.tts import send_text, stream_tts
from scripts.local.spawn import serve_truss

CLOSE_WAIT_S = 60.0  # a session the server has not closed by then counts as "not closed"
OVERLOAD_WAIT_S = 120.0  # an STT session of the overload (14 s of speech at real time)
GAUGE_SETTLE_S = 1.0
REFUSED = 1013  # try again later: admission control's refusal
REFUSED_RETRY_AFTER_S = 2.0  # a refusal read as a failed send carries no hint: the default
# The server runs before the soak starts: a handshake refused (HTTP status) fails at once.
CONNECT_BUDGET_S = 0.0
WORDS = (
    "The quick brown fox jumps over the lazy dog. Then it naps in the warm afternoon sun.".split()
)
STT_META = stt.v1_metadata()
TTS_CONFIG = {"voice": "tara", "max_tokens": 2000, "buffer_size": 10}
FRAME_S = stt.FRAME_SAMPLES / stt.CLIENT_RATE_HZ
GOOD_STT_FRAMES = math.ceil(2.0 / FRAME_S)  # 2 s of speech, sent at once


@dataclass
class Outcome:
    """How one client session ended, for either truss."""

    code: int | None  # close code; None: not closed within its wait
    refused: bool = False  # admission control's 1013
    retry_after_s: float | None = None  # the refusal's hint
    first_audio_s: float | None = None  # TTS: socket open -> first audio
    ended_after_s: float = 0.0  # from opening the socket to the end of the session


# -- the two trusses: the only place that tells them apart ---------------------------------------
async def stt_send(ws: ClientConnection, frames: Sequence[bytes], end: bool, speed: float) -> None:
    await ws.send(json.dumps(STT_META))
    await stt.send_audio(ws, list(frames), frame_s=FRAME_S / speed, end_audio=end)


async def tts_send(ws: ClientConnection, words: Sequence[str], end: bool, speed: float) -> None:
    await send_text(ws, TTS_CONFIG, list(words), end=end)  # text goes at once, at any speed


async def stt_session(url: str, frames: Sequence[bytes], good: bool) -> Outcome:
    """scripts/clients/stt.py's session: good, 2 s of speech at once; else all of it at real
    time (the overload)."""
    result = await stt.stream(
        url,
        list(frames[:GOOD_STT_FRAMES] if good else frames),
        STT_META,
        frame_s=FRAME_S,
        realtime=not good,
        timeout_s=CLOSE_WAIT_S if good else OVERLOAD_WAIT_S,
        connect_budget_s=CONNECT_BUDGET_S,
    )
    code = None if result.timed_out else result.close_code
    return Outcome(code, result.refused, result.retry_after_s)


async def tts_session(url: str, words: Sequence[str], good: bool) -> Outcome:
    """scripts/clients/tts.py's session: good, one short sentence (4 frames of audio); else
    all the words (the overload), however long it speaks."""
    result = await stream_tts(
        url,
        "Hello." if good else " ".join(words),
        config={**TTS_CONFIG, "max_tokens": 28} if good else TTS_CONFIG,
        timeout_s=CLOSE_WAIT_S if good else None,
        connect_budget_s=CONNECT_BUDGET_S,
    )
    first = result.frame_times[0] - result.connected_at if result.frame_times else None
    code = None if result.timed_out else result.close_code
    return Outcome(code, result.refused, result.retry_after_s, first_audio_s=first)


def load_speech() -> list[bytes]:
    return stt.frames_of(stt.read_wav(REPO_ROOT / "samples" / "speech_en.wav"))


@dataclass(frozen=True)
class Truss:
    """What the soak knows about one truss; every phase is written once, for both."""

    directory: str
    dummy_weights: bool  # serve.py with random weights (no checkpoint here)
    gauges: tuple[str, ...]  # must read 0 after every phase
    offered: int  # --offered's default
    # Fuzzed sessions at once: at most the CPU stand-in's admission capacity
    # (scripts/local/cpu_standin.yaml), so that the sessions are fuzzed rather than refused.
    fuzz_concurrency: int
    content: Callable[[], Sequence[Any]]  # a session's content: speech frames or words
    first_frame: str  # the valid first frame
    end_frame: str  # the end of the input
    end_share: float  # storm: sessions cut right after the end of the input
    send: Callable[[ClientConnection, Sequence[Any], bool, float], Awaitable[None]]
    session: Callable[[str, Sequence[Any], bool], Awaitable[Outcome]]
    # The server's histogram of the admitted sessions' latency under overload (else the
    # client's first audio).
    latency_histogram: str | None = None


TRUSSES = {
    "whisper": Truss(
        directory="whisper_streaming_truss",
        dummy_weights=False,
        gauges=("whisper_active_sessions",),
        offered=24,
        fuzz_concurrency=4,
        content=load_speech,
        first_frame=json.dumps(STT_META),
        end_frame=json.dumps({"type": "end_audio"}),
        end_share=0.5,
        send=stt_send,
        session=stt_session,
        latency_histogram="whisper_final_latency_seconds",
    ),
    "orpheus": Truss(
        directory="orpheus_tts_truss",
        dummy_weights=True,
        gauges=("orpheus_active_sessions", "orpheus_active_generations"),
        offered=32,
        fuzz_concurrency=1,
        content=lambda: WORDS,
        first_frame=json.dumps(TTS_CONFIG),
        end_frame=END_OF_INPUT,
        end_share=0.6,
        send=tts_send,
        session=tts_session,
    ),
}


# -- the server's /metrics -------------------------------------------------------------------
def parse_metrics(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


async def read_metrics(http_url: str) -> list[Sample]:
    async with http_client(http_url, timeout_s=10) as http:
        response = await http.get(f"{http_url}/metrics")
    response.raise_for_status()
    return parse_metrics(response.text)


def gauge_values(samples: Iterable[Sample], names: Iterable[str]) -> dict[str, float]:
    """Each named metric's value, summed over its labels (metrics not exposed are left out)."""
    values: dict[str, float] = {}
    for sample in samples:
        if sample.name in names:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def histogram_buckets(samples: Iterable[Sample], name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram."""
    return sorted((float(s.labels["le"]), s.value) for s in samples if s.name == f"{name}_bucket")


def histogram_p95(before: list, after: list) -> float | None:
    """The bucket bound under which 95 % of the observations made between two reads fall."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if not total:
        return None
    return next(le for le, c in counts if c >= 0.95 * total)


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


async def settle(http_url: str, truss: Truss, result: PhaseResult) -> None:
    """The session gauges must read 0 within GAUGE_SETTLE_S of the phase's last session."""
    deadline = time.monotonic() + GAUGE_SETTLE_S
    while True:
        gauges = gauge_values(await read_metrics(http_url), truss.gauges)
        if all(v == 0 for v in gauges.values()) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    result.gauges_after = gauges
    result.gauges_zero_within_1s = all(v == 0 for v in gauges.values())


# -- sessions ------------------------------------------------------------------------------------
async def open_socket(url: str) -> ClientConnection:
    """A raw socket, for the phases that break the protocol (scripts.clients.connect)."""
    return await open_websocket(url, budget_s=CONNECT_BUDGET_S)


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


async def client_session(url: str, truss: Truss, content: Sequence[Any], good: bool) -> Outcome:
    """One session of the truss's own client (good: short; else the whole content)."""
    opened = time.monotonic()
    try:
        outcome = await truss.session(url, content, good)
    except ConnectionClosed as exc:  # refused before the first frame went out
        code = exc.rcvd.code if exc.rcvd is not None else None
        hint = REFUSED_RETRY_AFTER_S if code == REFUSED else None
        outcome = Outcome(code, refused=code == REFUSED, retry_after_s=hint)
    outcome.ended_after_s = time.monotonic() - opened
    return outcome


# -- fuzz ---------------------------------------------------------------------------------------
def fuzz_frame(rng: random.Random, truss: Truss, content: Sequence[Any]) -> str | bytes:
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
    if choice < 11:  # valid content: 1 or 4 speech frames, 1 or 4 words
        start = rng.randrange(len(content))
        units = content[start : start + rng.choice([1, 4])]
        return b"".join(units) if isinstance(units[0], bytes) else " ".join(units)
    return truss.first_frame


async def fuzz_session(url: str, truss: Truss, rng: random.Random, content: Sequence) -> int | None:
    try:
        async with await open_socket(url) as ws:
            if rng.random() < 0.7:  # mostly a valid first frame, so later states get fuzzed too
                await ws.send(truss.first_frame)
            for _ in range(rng.randrange(1, 40)):
                await ws.send(fuzz_frame(rng, truss, content))
            ending = rng.randrange(4)
            if ending == 0:
                return None  # abrupt: the context manager closes cleanly; not a server fault
            if ending == 1:
                ws.transport.abort()
                return None
            await ws.send(truss.end_frame)
            code, _ = await drain(ws)
            return code if code is not None else -1
    except (ConnectionClosed, OSError, HandshakeRejected):
        return 0


async def run_fuzz(url: str, http: str, truss: Truss, n: int, seed: int) -> PhaseResult:
    result = PhaseResult("fuzz", n)
    content = truss.content()
    rng = random.Random(seed)
    sem = asyncio.Semaphore(truss.fuzz_concurrency)

    async def one(i: int) -> None:
        async with sem:
            code = await fuzz_session(url, truss, random.Random(rng.random() + i), content)
            result.notes["client_ended"] = result.notes.get("client_ended", 0) + (code is None)
            if code == -1:
                result.not_closed += 1
            elif code:
                result.close_codes[code] += 1
                result.internal_errors += code == 1011

    await asyncio.gather(*(one(i) for i in range(n)))
    await settle(http, truss, result)
    return result


# -- disconnect storm ---------------------------------------------------------------------------
STORM_SPEED = 2.0  # audio at 2x real time: 3 sessions load tiny.en about as 6 real-time ones
STORM_CONCURRENCY = 3


async def storm_session(url: str, truss: Truss, rng: random.Random, content: Sequence) -> str:
    """A good session (the client's sending half) cut at a random point by a random kind of
    disconnect; "refused" if the server answered 1013 before the cut."""
    how = rng.choice(["rst", "fin", "clean"])
    try:
        async with await open_socket(url) as ws:
            part = content[: rng.randrange(0, len(content))]
            await truss.send(ws, part, rng.random() < truss.end_share, STORM_SPEED)
            await asyncio.sleep(rng.uniform(0, 0.4))
            if ws.close_code == REFUSED:
                return "refused"
            if how == "rst":
                ws.transport.abort()
            elif how == "fin":
                ws.transport.close()
            else:
                await ws.close()
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == REFUSED:
            return "refused"
        raise
    return how


async def run_storm(url: str, http: str, truss: Truss, n: int, seed: int) -> PhaseResult:
    """Until ``n`` admitted sessions were cut (at most 3n attempts)."""
    result = PhaseResult("storm", n)
    content = truss.content()
    rng = random.Random(seed)
    sem = asyncio.Semaphore(STORM_CONCURRENCY)
    kinds: Counter = Counter()

    async def one(i: int) -> None:
        async with sem:
            if sum(kinds[k] for k in ("rst", "fin", "clean")) >= n:
                return
            try:
                session = storm_session(url, truss, random.Random(rng.random() + i), content)
                kinds[await session] += 1
            except (ConnectionClosed, OSError, HandshakeRejected):
                kinds["failed"] += 1

    await asyncio.gather(*(one(i) for i in range(3 * n)))
    result.sessions = sum(kinds.values())
    result.notes["cuts"] = dict(kinds)
    await settle(http, truss, result)
    return result


# -- bad frame -> close latency ------------------------------------------------------------------
async def run_error_latency(url: str, http: str, truss: Truss, n: int) -> PhaseResult:
    result = PhaseResult("bad frame -> close", n)
    times = []
    for i in range(n):
        async with await open_socket(url) as ws:
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
    await settle(http, truss, result)
    return result


# -- overload ------------------------------------------------------------------------------------
async def run_overload(url: str, http: str, truss: Truss, offered: int) -> PhaseResult:
    result = PhaseResult(f"overload ({offered} offered)", offered)
    content = truss.content()
    histogram = truss.latency_histogram
    before = histogram_buckets(await read_metrics(http), histogram) if histogram else []
    sessions = await asyncio.gather(
        *(client_session(url, truss, content, good=False) for _ in range(offered)),
        return_exceptions=True,
    )
    ok = [s for s in sessions if isinstance(s, Outcome)]
    failures = Counter(type(s).__name__ for s in sessions if not isinstance(s, Outcome))
    refused = [s for s in ok if s.refused]
    admitted = [s for s in ok if not s.refused]
    for s in ok:
        result.close_codes[s.code] += 1
        result.internal_errors += s.code == 1011
    result.notes.update(
        admitted=len(admitted),
        refused=len(refused),
        failed=dict(failures),
        refusal_p95_ms=round(percentile([s.ended_after_s * 1000 for s in refused], 95), 1)
        if refused
        else None,
    )
    # Latency of the admitted sessions, from the server's own histogram where it has one.
    if histogram:
        after = histogram_buckets(await read_metrics(http), histogram)
        # Speech end -> final sent, as the server measured it (bucket resolution).
        result.notes["admitted_final_latency_p95_le_s"] = histogram_p95(before, after)
    else:
        firsts = [s.first_audio_s for s in admitted if s.first_audio_s is not None]
        result.notes["admitted_first_audio_p50_s"] = (
            round(percentile(firsts, 50), 3) if firsts else None
        )
        result.notes["admitted_first_audio_p95_s"] = (
            round(percentile(firsts, 95), 3) if firsts else None
        )
    await settle(http, truss, result)
    return result


# -- RSS over sequential sessions ----------------------------------------------------------------
GOOD_CLIENT_ATTEMPTS = 4


async def good_session(url: str, truss: Truss, content: Sequence[Any]) -> int | None:
    """A short good session; like a well-behaved client it honours 1013's retry_after_s."""
    for _ in range(GOOD_CLIENT_ATTEMPTS):
        outcome = await client_session(url, truss, content, good=True)
        if outcome.code != REFUSED or outcome.retry_after_s is None:
            return outcome.code
        await asyncio.sleep(outcome.retry_after_s)
    return outcome.code


async def run_sequential(url: str, http: str, truss: Truss, n: int, pid: int | None) -> PhaseResult:
    import psutil

    result = PhaseResult(f"{n} sequential sessions", n)
    content = truss.content()
    rss = []
    for i in range(n):
        code = await good_session(url, truss, content)
        result.close_codes[code] += 1
        if pid is not None and (i + 1) % max(n // 10, 1) == 0:
            rss.append(psutil.Process(pid).memory_info().rss / 2**20)
    if rss:
        result.notes.update(
            rss_mib_after_10pct=round(rss[0], 1),
            rss_mib_after_all=round(rss[-1], 1),
            growth_pct=round((rss[-1] - rss[0]) / rss[0] * 100, 1),
        )
    await settle(http, truss, result)
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
    truss = TRUSSES[args.kind]
    results = []
    if args.fuzz:
        results.append(await run_fuzz(url, http, truss, args.fuzz, args.seed))
    if args.storm:
        results.append(await run_storm(url, http, truss, args.storm, args.seed + 1))
    if args.bad:
        results.append(await run_error_latency(url, http, truss, args.bad))
    if args.offered:
        results.append(await run_overload(url, http, truss, args.offered))
    # After all that, a good client is still admitted.
    final = PhaseResult("good client afterwards", 1)
    final.close_codes[await good_session(url, truss, truss.content())] += 1
    results.append(final)
    if args.sequential:
        results.append(await run_sequential(url, http, truss, args.sequential, pid))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(TRUSSES))
    parser.add_argument("--url", help="a running server (ws://127.0.0.1:…/v1/websocket)")
    parser.add_argument("--fuzz", type=int, default=500)
    parser.add_argument("--storm", type=int, default=300)
    parser.add_argument("--bad", type=int, default=100, help="bad-frame latency samples")
    parser.add_argument("--offered", type=int, help="concurrent sessions (24 STT / 32 TTS)")
    parser.add_argument("--sequential", type=int, default=0, help="good sessions for RSS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    truss = TRUSSES[args.kind]
    if args.offered is None:
        args.offered = truss.offered
    with contextlib.ExitStack() as stack:
        if args.url:
            if not args.url.startswith(("ws://127.0.0.1", "ws://localhost")):
                parser.error("soak only talks to a server on this machine")
            url, http, pid = args.url, "http://" + args.url[5:].split("/", 1)[0], None
        else:
            served = stack.enter_context(
                serve_truss(truss.directory, dummy_weights=truss.dummy_weights)
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
