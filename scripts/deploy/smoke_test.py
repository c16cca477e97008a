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
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import WebSocketException

from orpheus_tts.tokens import BYTES_PER_SAMPLE as TTS_BYTES_PER_SAMPLE
from orpheus_tts.tokens import SAMPLE_RATE_HZ as TTS_SAMPLE_RATE_HZ
from scripts import SAMPLES_DIR
from scripts.bench.wer import wer
from scripts.clients import stt, tts
from scripts.clients.auth import API_KEY_ENV, is_local
from scripts.clients.connect import (
    DEFAULT_CONNECT_BUDGET_S,
    HANDSHAKE_BACKOFF_START_S,
    Handshake,
    HandshakeRejected,
)

logger = logging.getLogger("smoke_test")

DEFAULT_STT_SAMPLE = SAMPLES_DIR / "speech_en.wav"
NORMAL_CLOSE = 1000

# TTS: the protocol's own constants (orpheus_tts), s16le mono at 24 kHz.
DEFAULT_TTS_TEXT = "Hello! This is a smoke test of streaming speech, one word at a time."
DEFAULT_MIN_AUDIO_S = 1.0
DEFAULT_TTS_TIMEOUT_S = 120.0

# STT: the published client's frames (scripts.clients.stt), a bundled sample.
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


def _handshake_metrics(handshake: Handshake, metrics: dict[str, Any]) -> None:
    metrics["handshake_attempts"] = handshake.attempts
    metrics["connect_s"] = handshake.connect_s


def _describe_error(frame: dict[str, Any]) -> str:
    body = frame.get("body") or {}
    return f"{body.get('error_type', 'error')}: {body.get('message', frame)}"


async def smoke_tts(options: SmokeOptions) -> SmokeResult:
    """Speak a sentence word by word (scripts.clients.tts); require enough PCM and a normal
    close."""
    metrics: dict[str, Any] = {}
    timeout_s = options.timeout_s or DEFAULT_TTS_TIMEOUT_S
    config = {"voice": options.voice} if options.voice else {}
    result = await _with_handshake(
        tts.stream_tts(
            options.url,
            options.text,
            config=config,
            api_key=options.api_key,
            timeout_s=timeout_s,
            connect_budget_s=options.connect_budget_s,
            handshake_backoff_s=options.handshake_backoff_s,
        ),
        metrics,
    )
    _handshake_metrics(result.handshake, metrics)
    pcm_bytes = len(result.pcm)
    audio_s = pcm_bytes / (TTS_SAMPLE_RATE_HZ * TTS_BYTES_PER_SAMPLE)
    first = result.frame_times[0] - result.first_word_at if result.frame_times else None
    metrics.update(
        audio_s=round(audio_s, 3),
        pcm_bytes=pcm_bytes,
        time_to_first_audio_s=round(first, 3) if first is not None else None,
        total_s=round(result.closed_at - result.first_word_at, 3),
        close_code=result.close_code,
    )
    if result.error and result.error.get("type") == "error":
        raise SmokeFailure(f"server error frame: {_describe_error(result.error)}", metrics)
    if result.timed_out:
        raise SmokeFailure(
            f"no normal close within {timeout_s:.0f} s ({pcm_bytes} bytes of audio so far)",
            metrics,
        )
    if result.close_code != NORMAL_CLOSE:
        raise SmokeFailure(
            f"closed with {result.close_code} {result.close_reason}".strip()
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


async def _with_handshake(client: Any, metrics: dict[str, Any]) -> Any:
    """Run a client call; a refused or never-ready handshake is a smoke failure."""
    try:
        return await client
    except HandshakeRejected as exc:
        metrics["handshake_attempts"] = exc.attempts
        raise SmokeFailure(str(exc), metrics) from None


def load_reference(sample: Path) -> str:
    """The reference text bundled next to a sample (``<name>.json`` with a "text" key)."""
    meta = sample.with_suffix(".json")
    try:
        return str(json.loads(meta.read_text())["text"])
    except (OSError, ValueError, KeyError) as exc:
        raise SmokeFailure(f"no reference text for {sample}: {exc}") from None


async def smoke_stt(options: SmokeOptions) -> SmokeResult:
    """Stream the sample with the STT client (scripts.clients.stt, published-client metadata);
    require the finals' transcript within the WER bound."""
    metrics: dict[str, Any] = {}
    timeout_s = options.timeout_s or DEFAULT_STT_TIMEOUT_S
    try:
        samples = stt.read_wav(options.sample)
    except (OSError, EOFError, ValueError, SystemExit) as exc:
        raise SmokeFailure(f"{options.sample}: {exc}") from None
    audio_s = len(samples) / stt.CLIENT_RATE_HZ
    if audio_s > STT_MAX_SAMPLE_S:
        raise SmokeFailure(f"{options.sample}: longer than {STT_MAX_SAMPLE_S:.0f} s")
    reference = options.reference or load_reference(options.sample)
    result = await _with_handshake(
        stt.stream(
            options.url,
            stt.frames_of(samples),
            stt.v1_metadata(partials=False),
            frame_s=stt.FRAME_SAMPLES / stt.CLIENT_RATE_HZ,
            realtime=not options.fast,
            api_key=options.api_key,
            timeout_s=audio_s + timeout_s,
            connect_budget_s=options.connect_budget_s,
            handshake_backoff_s=options.handshake_backoff_s,
        ),
        metrics,
    )
    _handshake_metrics(result.handshake, metrics)
    if result.errors:
        raise SmokeFailure(f"server error frame: {_describe_error(result.errors[0])}", metrics)
    transcript = result.transcript
    error_rate = wer(reference, transcript)
    last = result.arrivals[-1][0] if result.arrivals else None
    metrics.update(
        audio_s=round(audio_s, 3),
        finals=len(result.finals),
        first_final_s=round(result.first_final_s, 3) if result.first_final_s else None,
        transcript=transcript,
        reference=reference,
        wer=round(error_rate, 4),
        flush_s=(
            round(last - result.end_audio_sent_s, 3)
            if last is not None and result.end_audio_sent_s is not None
            else None
        ),
        close_code=result.close_code,
        fast=options.fast,
    )
    if result.timed_out:
        raise SmokeFailure(
            f"no end_audio 'finished' within {timeout_s:.0f} s after the audio "
            f"({len(result.finals)} finals so far)",
            metrics,
        )
    if not result.finished:
        raise SmokeFailure(
            f"connection ended ({result.close_code} {result.close_reason}) before end_audio "
            "finished",
            metrics,
        )
    if error_rate > options.max_wer:
        raise SmokeFailure(
            f"WER {error_rate:.2f} > {options.max_wer:.2f}: heard {transcript!r}", metrics
        )
    verdict = (
        f"WER {error_rate:.2f} <= {options.max_wer:.2f} over {len(result.finals)} finals "
        f"({audio_s:.1f} s audio)"
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
    except (TimeoutError, OSError, WebSocketException, ValueError, ConnectionError) as exc:
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
