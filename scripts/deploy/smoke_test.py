#!/usr/bin/env python3
"""Check that a speech WebSocket actually speaks (TTS) or transcribes (STT); exit 0 or 1.

    python scripts/deploy/smoke_test.py tts WS_URL [--json]
    python scripts/deploy/smoke_test.py stt WS_URL [--fast] [--json]

WS_URL may be a local server (``ws://127.0.0.1:8080/v1/websocket``), one Baseten deployment
(``wss://model-<id>.api.baseten.co/deployment/<dep>/websocket``) or an environment
(``…/environments/production/websocket``). Remote URLs send ``Authorization: Api-Key
$BASETEN_API_KEY``; local ones need no key. HTTP 503 at the handshake (a deployment loading or
waking from zero) is retried with backoff within ``--connect-budget`` seconds.

TTS: Baseten's Orpheus protocol (JSON config, one text frame per word, ``__END__``); requires at
least ``--min-audio`` seconds of 24 kHz s16le PCM and a normal close within ``--timeout``; reports
the time to first audio. STT: the streaming-Whisper protocol (v1 metadata, 512-sample s16le frames
at real-time pace, ``end_audio`` handshake) with a bundled sample; requires the final transcript
within ``--max-wer`` of the reference text.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jiwer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from scripts import REPO_ROOT
from scripts.clients.auth import api_key_headers, is_local

logger = logging.getLogger("smoke_test")

DEFAULT_STT_SAMPLE = REPO_ROOT / "samples" / "speech_en.wav"
API_KEY_ENV = "BASETEN_API_KEY"

# Handshake retries: Baseten answers 503 while a deployment loads or wakes (GPU cold starts take
# minutes); 502/504 are the gateway's own transient answers.
RETRY_HANDSHAKE_STATUSES = frozenset({502, 503, 504})
DEFAULT_CONNECT_BUDGET_S = 15 * 60.0
HANDSHAKE_BACKOFF_START_S = 2.0
HANDSHAKE_BACKOFF_MAX_S = 30.0
OPEN_TIMEOUT_S = 30.0
NORMAL_CLOSE = 1000

# TTS (Orpheus protocol): s16le mono at 24 kHz.
# Declared here, not imported from orpheus_tts: the deploy job installs only the deploy tools
# (truss, jiwer, websockets, httpx, PyYAML), not the trusses' dependencies; tests check that
# these equal the protocol's own (tests/test_smoke_test.py).
TTS_SAMPLE_RATE_HZ = 24_000
TTS_BYTES_PER_SAMPLE = 2
TTS_END_OF_INPUT = "__END__"
DEFAULT_TTS_TEXT = "Hello! This is a smoke test of streaming speech, one word at a time."
DEFAULT_MIN_AUDIO_S = 1.0
DEFAULT_TTS_TIMEOUT_S = 120.0

# STT (streaming Whisper protocol): 512-sample frames of s16le at 16 kHz, as real clients send.
STT_SAMPLE_RATE_HZ = 16_000
STT_FRAME_SAMPLES = 512
STT_BYTES_PER_SAMPLE = 2
DEFAULT_MAX_WER = 0.3
DEFAULT_STT_TIMEOUT_S = 120.0  # after the last audio frame was sent
# Bound on the STT sample's length (streamed at real-time pace before that timeout starts);
# the bundled default is 14.4 s. Used for the deploy job's worst-case time.
STT_MAX_SAMPLE_S = 60.0


def default_timeout_s(kind: str) -> float:
    """The longest one smoke test runs once connected, with the default timeouts."""
    if kind == "tts":
        return DEFAULT_TTS_TIMEOUT_S
    return STT_MAX_SAMPLE_S + DEFAULT_STT_TIMEOUT_S


_NUMBER_WORDS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve",
}  # fmt: skip
_PUNCTUATION = re.compile(r"[^\w\s']|(?<!\w)'|'(?!\w)")


class SmokeFailure(RuntimeError):
    """The endpoint did not do its job; carries the metrics measured up to then."""

    def __init__(self, message: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metrics = metrics or {}


@dataclass(frozen=True)
class SmokeOptions:
    kind: str  # "tts" or "stt"
    url: str
    api_key: str | None = None
    timeout_s: float | None = None
    connect_budget_s: float = DEFAULT_CONNECT_BUDGET_S
    handshake_backoff_s: float = HANDSHAKE_BACKOFF_START_S
    # TTS
    text: str = DEFAULT_TTS_TEXT
    voice: str | None = None
    min_audio_s: float = DEFAULT_MIN_AUDIO_S
    # STT
    sample: Path = DEFAULT_STT_SAMPLE
    reference: str | None = None  # default: the sample's .json "text"
    max_wer: float = DEFAULT_MAX_WER
    fast: bool = False


@dataclass
class SmokeResult:
    ok: bool
    kind: str
    url: str
    verdict: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, small numbers as words, single spaces (for WER)."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_NUMBER_WORDS.get(w, w) for w in words)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """WER of hypothesis against reference after normalisation (1.0 for an empty hypothesis)."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if not ref:
        raise ValueError("empty reference text")
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


async def connect_with_retry(
    options: SmokeOptions, metrics: dict[str, Any], *, sleep=asyncio.sleep
) -> ClientConnection:
    """Open the WebSocket, retrying 502/503/504 handshakes with backoff within the budget."""
    deadline = time.monotonic() + options.connect_budget_s
    delay = options.handshake_backoff_s
    attempts = 0
    started = time.monotonic()
    while True:
        attempts += 1
        metrics["handshake_attempts"] = attempts
        try:
            ws = await connect(
                options.url,
                additional_headers=api_key_headers(options.url, options.api_key),
                open_timeout=OPEN_TIMEOUT_S,
                max_size=None,
                proxy=None if is_local(options.url) else True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status not in RETRY_HANDSHAKE_STATUSES:
                hint = " (check BASETEN_API_KEY)" if status in (401, 403) else ""
                raise SmokeFailure(
                    f"handshake rejected with HTTP {status}{hint}", metrics
                ) from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SmokeFailure(
                    f"still HTTP {status} at the handshake after {attempts} attempts "
                    f"({options.connect_budget_s:.0f} s): the deployment did not become ready",
                    metrics,
                ) from None
            logger.info("handshake HTTP %d (loading?); retrying in %.0f s", status, delay)
            await sleep(min(delay, remaining))
            delay = min(delay * 2, HANDSHAKE_BACKOFF_MAX_S)
            continue
        metrics["connect_s"] = round(time.monotonic() - started, 3)
        return ws


def _error_frame(message: str | bytes) -> str | None:
    """The description of a server error frame, or None for any other text frame."""
    if isinstance(message, bytes):
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("type") == "error":
        body = data.get("body") or {}
        return f"{body.get('error_type', 'error')}: {body.get('message', data)}"
    return None


async def smoke_tts(options: SmokeOptions) -> SmokeResult:
    """Speak a sentence word by word; require enough PCM and a normal close."""
    metrics: dict[str, Any] = {}
    timeout_s = options.timeout_s or DEFAULT_TTS_TIMEOUT_S
    ws = await connect_with_retry(options, metrics)
    pcm_bytes = 0
    first_audio_at: float | None = None
    async with ws:
        config: dict[str, Any] = {}
        if options.voice:
            config["voice"] = options.voice
        await ws.send(json.dumps(config))
        started = time.monotonic()
        for word in options.text.split():
            await ws.send(word)
        await ws.send(TTS_END_OF_INPUT)

        async def receive() -> None:
            nonlocal pcm_bytes, first_audio_at
            async for message in ws:
                if isinstance(message, bytes):
                    if message and first_audio_at is None:
                        first_audio_at = time.monotonic()
                    pcm_bytes += len(message)
                    continue
                if error := _error_frame(message):
                    raise SmokeFailure(f"server error frame: {error}", metrics)

        try:
            await asyncio.wait_for(receive(), timeout_s)
        except TimeoutError:
            raise SmokeFailure(
                f"no normal close within {timeout_s:.0f} s ({pcm_bytes} bytes of audio so far)",
                metrics,
            ) from None
        except ConnectionClosed:
            pass  # judged by the close code below
    audio_s = pcm_bytes / (TTS_SAMPLE_RATE_HZ * TTS_BYTES_PER_SAMPLE)
    metrics.update(
        audio_s=round(audio_s, 3),
        pcm_bytes=pcm_bytes,
        time_to_first_audio_s=round(first_audio_at - started, 3) if first_audio_at else None,
        total_s=round(time.monotonic() - started, 3),
        close_code=ws.close_code,
    )
    if ws.close_code != NORMAL_CLOSE:
        raise SmokeFailure(
            f"closed with {ws.close_code} {ws.close_reason or ''}".strip()
            + f" after {audio_s:.2f} s of audio",
            metrics,
        )
    if pcm_bytes % TTS_BYTES_PER_SAMPLE:
        raise SmokeFailure(f"odd PCM byte count {pcm_bytes}: not s16le", metrics)
    if audio_s < options.min_audio_s:
        raise SmokeFailure(
            f"only {audio_s:.2f} s of audio (need {options.min_audio_s:.2f} s)", metrics
        )
    verdict = (
        f"{audio_s:.2f} s of audio, first audio after {metrics['time_to_first_audio_s']:.3f} s"
    )
    return SmokeResult(True, "tts", options.url, verdict, metrics)


def load_sample(path: Path) -> bytes:
    """PCM s16le mono 16 kHz frames of a WAV file."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (
            STT_SAMPLE_RATE_HZ,
            1,
            STT_BYTES_PER_SAMPLE,
        ):
            raise SmokeFailure(f"{path}: need 16 kHz mono 16-bit PCM")
        if wav.getnframes() > STT_MAX_SAMPLE_S * STT_SAMPLE_RATE_HZ:
            raise SmokeFailure(f"{path}: longer than {STT_MAX_SAMPLE_S:.0f} s")
        return wav.readframes(wav.getnframes())


def load_reference(sample: Path) -> str:
    """The reference text bundled next to a sample (``<name>.json`` with a "text" key)."""
    meta = sample.with_suffix(".json")
    try:
        return str(json.loads(meta.read_text())["text"])
    except (OSError, ValueError, KeyError) as exc:
        raise SmokeFailure(f"no reference text for {sample}: {exc}") from None


def stt_metadata() -> dict[str, Any]:
    """The v1 session metadata, as Baseten's own client sends it."""
    return {
        "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
        "streaming_whisper_params": {
            "encoding": "pcm_s16le",
            "sample_rate": STT_SAMPLE_RATE_HZ,
            "enable_partial_transcripts": False,
            "audio_language": "en",
        },
    }


async def _send_audio(
    ws: ClientConnection, pcm: bytes, fast: bool, timing: dict[str, float]
) -> None:
    frame_bytes = STT_FRAME_SAMPLES * STT_BYTES_PER_SAMPLE
    frame_s = STT_FRAME_SAMPLES / STT_SAMPLE_RATE_HZ
    start = time.monotonic()
    for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
        frame = pcm[offset : offset + frame_bytes]
        frame = frame + b"\x00" * (frame_bytes - len(frame))  # last frame zero-padded
        await ws.send(frame)
        if fast:
            await asyncio.sleep(0)
        else:  # real-time pace against the wall clock, so send jitter does not accumulate
            await asyncio.sleep(max(0.0, start + (index + 1) * frame_s - time.monotonic()))
    await ws.send(json.dumps({"type": "end_audio"}))
    timing["end_audio_sent"] = time.monotonic()


async def smoke_stt(options: SmokeOptions) -> SmokeResult:
    """Stream the sample; require the finals' transcript within the WER bound."""
    metrics: dict[str, Any] = {}
    timeout_s = options.timeout_s or DEFAULT_STT_TIMEOUT_S
    pcm = load_sample(options.sample)
    reference = options.reference or load_reference(options.sample)
    audio_s = len(pcm) / (STT_SAMPLE_RATE_HZ * STT_BYTES_PER_SAMPLE)
    finals: list[str] = []
    finished = False
    timing: dict[str, float] = {}
    ws = await connect_with_retry(options, metrics)
    async with ws:
        await ws.send(json.dumps(stt_metadata()))
        started = time.monotonic()
        sender = asyncio.create_task(_send_audio(ws, pcm, options.fast, timing))

        async def receive() -> bool:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                if error := _error_frame(message):
                    raise SmokeFailure(f"server error frame: {error}", metrics)
                data = json.loads(message)
                kind = data.get("type")
                if kind == "transcription" and data.get("is_final"):
                    text = data.get("transcript")
                    if text is None:  # older servers: join the segments
                        text = " ".join(seg.get("text", "") for seg in data.get("segments", []))
                    finals.append(str(text).strip())
                    metrics.setdefault("first_final_s", round(time.monotonic() - started, 3))
                elif kind == "end_audio" and (data.get("body") or {}).get("status") == "finished":
                    return True
            return False

        try:
            finished = await asyncio.wait_for(receive(), audio_s + timeout_s)
        except TimeoutError:
            raise SmokeFailure(
                f"no end_audio 'finished' within {timeout_s:.0f} s after the audio "
                f"({len(finals)} finals so far)",
                metrics,
            ) from None
        except ConnectionClosed:
            pass
        finally:
            if not sender.done():
                sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
    transcript = " ".join(t for t in finals if t)
    wer = word_error_rate(reference, transcript)
    metrics.update(
        audio_s=round(audio_s, 3),
        finals=len(finals),
        transcript=transcript,
        reference=reference,
        wer=round(wer, 4),
        flush_s=(
            round(time.monotonic() - timing["end_audio_sent"], 3)
            if "end_audio_sent" in timing
            else None
        ),
        close_code=ws.close_code,
        fast=options.fast,
    )
    if not finished:
        raise SmokeFailure(
            f"connection ended ({ws.close_code} {ws.close_reason or ''}) before end_audio finished",
            metrics,
        )
    if wer > options.max_wer:
        raise SmokeFailure(f"WER {wer:.2f} > {options.max_wer:.2f}: heard {transcript!r}", metrics)
    verdict = (
        f"WER {wer:.2f} <= {options.max_wer:.2f} over {len(finals)} finals ({audio_s:.1f} s audio)"
    )
    return SmokeResult(True, "stt", options.url, verdict, metrics)


async def run_async(options: SmokeOptions) -> SmokeResult:
    """Run one smoke test; every failure becomes a result with ok=False (never an exception)."""
    try:
        if options.kind == "tts":
            return await smoke_tts(options)
        if options.kind == "stt":
            return await smoke_stt(options)
        raise SmokeFailure(f"unknown kind {options.kind!r}")
    except SmokeFailure as exc:
        return SmokeResult(False, options.kind, options.url, exc.message, exc.metrics, exc.message)
    except (TimeoutError, OSError, WebSocketException, ValueError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        if options.api_key:
            message = message.replace(options.api_key, "***")
        return SmokeResult(False, options.kind, options.url, message, {}, message)


def run(options: SmokeOptions) -> SmokeResult:
    """Blocking wrapper around :func:`run_async`."""
    return asyncio.run(run_async(options))


def format_verdict(result: SmokeResult) -> str:
    return f"{'PASS' if result.ok else 'FAIL'} {result.kind} {result.url}: {result.verdict}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tts", "stt"])
    parser.add_argument("url", help="ws:// or wss:// URL of the speech WebSocket")
    parser.add_argument("--timeout", type=float, help="seconds to wait for the result")
    parser.add_argument(
        "--connect-budget",
        type=float,
        default=DEFAULT_CONNECT_BUDGET_S,
        help="seconds to keep retrying HTTP 503 at the handshake",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    tts = parser.add_argument_group("tts")
    tts.add_argument("--text", default=DEFAULT_TTS_TEXT)
    tts.add_argument("--voice")
    tts.add_argument("--min-audio", type=float, default=DEFAULT_MIN_AUDIO_S, help="seconds")
    stt = parser.add_argument_group("stt")
    stt.add_argument("--sample", type=Path, default=DEFAULT_STT_SAMPLE)
    stt.add_argument("--max-wer", type=float, default=DEFAULT_MAX_WER)
    stt.add_argument("--fast", action="store_true", help="send audio as fast as possible")
    return parser


def options_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> SmokeOptions:
    env = dict(os.environ) if env is None else env
    key = (env.get(API_KEY_ENV) or "").strip() or None
    if key is None and not is_local(args.url):
        raise SystemExit(f"smoke_test: {API_KEY_ENV} is required for {urlsplit(args.url).hostname}")
    return SmokeOptions(
        kind=args.kind,
        url=args.url,
        api_key=key,
        timeout_s=args.timeout,
        connect_budget_s=args.connect_budget,
        text=args.text,
        voice=args.voice,
        min_audio_s=args.min_audio,
        sample=args.sample,
        max_wer=args.max_wer,
        fast=args.fast,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    result = run(options_from_args(args))
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(format_verdict(result))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
