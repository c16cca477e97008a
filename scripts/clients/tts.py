#!/usr/bin/env python
"""Stream text word by word to the Orpheus TTS WebSocket and save the audio as a WAV file.

Local:   python scripts/clients/tts.py --url ws://127.0.0.1:8080/v1/websocket --text "Hi there."
Baseten: python scripts/clients/tts.py --model-id abc123 --text-file speech.txt --out speech.wav
         (API key from --api-key or BASETEN_API_KEY, sent as ``Authorization: Api-Key ...``)

Speaks Baseten's published protocol: a JSON first frame, one text frame per word, ``__END__``;
binary PCM s16le 24 kHz mono frames come back until the server closes. Prints the time to first
audio and the real-time factor (wall time / audio duration; below 1 is faster than real time).

``--format`` / ``--rate`` ask for another encoding (mp3, opus, wav, mulaw, ... at 8-48 kHz);
``--events`` speaks the event protocol (``EventSession``): each paragraph of the text is a turn
ended by ``flush``; ``--interactive`` reads turns from stdin (``/clear`` barges in, ``/voice leo``
changes the voice, end of input ends the session).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import BYTES_PER_SAMPLE, SAMPLE_RATE_HZ
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.connect import (
    DEFAULT_CONNECT_BUDGET_S,
    HANDSHAKE_BACKOFF_START_S,
    Handshake,
    open_websocket,
)
from speech_common.ws import CloseCode  # TRY_AGAIN_LATER: full or behind

logger = logging.getLogger("tts_client")

DEFAULT_TEXT = (
    "Hello there! This is Orpheus, streaming speech as the words arrive. "
    "Each sentence starts playing before the next one has been written. <laugh> Pretty neat."
)
_SENTENCE_END = re.compile(r"[.!?…]['\")\]]*$")


@dataclass
class TTSResult:
    """What one session produced, with client-side timestamps (``time.monotonic()``)."""

    pcm: bytearray = field(default_factory=bytearray)
    frame_times: list[float] = field(default_factory=list)
    frame_sizes: list[int] = field(default_factory=list)
    connected_at: float = 0.0
    first_word_at: float = 0.0
    # When the word after the first sentence was sent (or __END__): the server may speak then.
    first_sentence_released_at: float = 0.0
    end_sent_at: float = 0.0
    closed_at: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    error: dict[str, Any] | None = None  # the last JSON frame (an error frame in this protocol)
    timed_out: bool = False  # timeout_s passed before the server closed
    handshake: Handshake = field(default_factory=Handshake)

    @property
    def audio_s(self) -> float:
        return len(self.pcm) / (SAMPLE_RATE_HZ * BYTES_PER_SAMPLE)

    @property
    def time_to_first_audio_s(self) -> float | None:
        """From the first sentence being complete (as the server sees it) to the first audio."""
        if not self.frame_times:
            return None
        return self.frame_times[0] - self.first_sentence_released_at

    @property
    def real_time_factor(self) -> float | None:
        """Wall time from the first word to the last audio, divided by the audio duration."""
        if not self.frame_times or self.audio_s == 0:
            return None
        return (self.frame_times[-1] - self.first_word_at) / self.audio_s

    @property
    def retry_after_s(self) -> float | None:
        """The refusal's hint: when a retry may be admitted (None without one)."""
        body = (self.error or {}).get("body")
        return body.get("retry_after_s") if isinstance(body, dict) else None

    @property
    def refused(self) -> bool:
        """Admission control refused the session: 1013 and an error frame with the hint."""
        return self.close_code == CloseCode.TRY_AGAIN_LATER and self.retry_after_s is not None


def baseten_url(model_id: str, environment: str | None, deployment_id: str | None) -> str:
    """The WebSocket URL of a Baseten model (an environment, or one deployment)."""
    base = f"wss://model-{model_id}.api.baseten.co"
    if deployment_id:
        return f"{base}/deployment/{deployment_id}/websocket"
    return f"{base}/environments/{environment or 'production'}/websocket"


async def _open(url: str, api_key: str | None, **options: Any) -> ClientConnection:
    """The TTS socket (scripts.clients.connect), without permessage-deflate: audio does not
    compress, and Baseten's published TTS client does not offer it."""
    return await open_websocket(url, api_key, compression=None, **options)


async def send_text(
    ws: ClientConnection,
    config: dict[str, Any],
    words: list[str],
    *,
    result: TTSResult | None = None,
    word_interval_s: float = 0.0,
    end: bool = True,
) -> None:
    """The published protocol's sending half: ``config``, one frame per word, then
    ``__END__`` (not with ``end=False``); when each part went out is noted in ``result``."""
    result = result if result is not None else TTSResult()
    first_sentence_end = next(
        (i for i, w in enumerate(words) if _SENTENCE_END.search(w)), len(words) - 1
    )
    await ws.send(json.dumps(config))
    for i, word in enumerate(words):
        await ws.send(word)
        now = time.monotonic()
        if i == 0:
            result.first_word_at = now
        if i == first_sentence_end + 1:
            result.first_sentence_released_at = now
        if word_interval_s:
            await asyncio.sleep(word_interval_s)
    if not end:
        return
    await ws.send(END_OF_INPUT)
    result.end_sent_at = time.monotonic()
    if not result.first_sentence_released_at:
        result.first_sentence_released_at = result.end_sent_at
    if not result.first_word_at:
        result.first_word_at = result.end_sent_at


async def stream_tts(
    url: str,
    text: str,
    *,
    config: dict[str, Any],
    api_key: str | None = None,
    word_interval_s: float = 0.0,
    timeout_s: float | None = None,
    connect_budget_s: float = DEFAULT_CONNECT_BUDGET_S,
    handshake_backoff_s: float = HANDSHAKE_BACKOFF_START_S,
) -> TTSResult:
    """One session: send ``config``, then each word of ``text``, then ``__END__``; collect audio
    until the server closes or ``timeout_s`` (from the open socket) passes (``timed_out``)."""
    result = TTSResult()
    ws = await _open(
        url,
        api_key,
        budget_s=connect_budget_s,
        backoff_s=handshake_backoff_s,
        handshake=result.handshake,
    )
    result.connected_at = time.monotonic()
    async with ws:
        sender = asyncio.create_task(
            send_text(ws, config, text.split(), result=result, word_interval_s=word_interval_s)
        )
        try:
            async with asyncio.timeout(timeout_s):
                async for message in ws:
                    if isinstance(message, bytes):
                        result.frame_times.append(time.monotonic())
                        result.frame_sizes.append(len(message))
                        result.pcm.extend(message)
                    else:
                        result.error = json.loads(message)
        except TimeoutError:
            result.timed_out = True
        except ConnectionClosed:  # an error close (1008, 1013, ...) or none (1006)
            pass
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
    result.closed_at = time.monotonic()
    result.close_code = ws.close_code
    result.close_reason = ws.close_reason or ""
    return result


@dataclass
class Received:
    at: float  # time.monotonic()
    audio: bytes | None = None
    event: dict[str, Any] | None = None


class EventSession:
    """A client of the event protocol (``events: true``): one socket for a conversation,
    ``async with await EventSession.open(url, config) as session:`` (closed on leaving).

    A reader task files every frame, timestamped, into ``received``; ``wait_for`` returns the
    next event of a type (audio before it is kept in ``received`` as well)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.received: list[Received] = []
        self.created: dict[str, Any] = {}
        self.close_code: int | None = None
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self._seen = 0  # events already returned by wait_for

    @classmethod
    async def open(
        cls, url: str, config: dict[str, Any], api_key: str | None = None
    ) -> EventSession:
        ws = await _open(url, api_key)
        await ws.send(json.dumps({**config, "events": True}))
        session = cls(ws)
        session.created = await session.wait_for("session_created")
        return session

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, bytes):
                    item = Received(time.monotonic(), audio=message)
                else:
                    item = Received(time.monotonic(), event=json.loads(message))
                async with self._arrived:
                    self.received.append(item)
                    self._arrived.notify_all()
        except ConnectionClosed:  # an error close (1008, 1013, ...) or none (1006)
            pass
        finally:
            self.close_code = self.ws.close_code
            async with self._arrived:
                self._arrived.notify_all()

    async def wait_for(self, kind: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """The next event of this type (an ``error`` event raises)."""

        def find() -> dict[str, Any] | None:
            for i in range(self._seen, len(self.received)):
                event = self.received[i].event
                if event is None:
                    continue
                if event["type"] == kind:
                    self._seen = i + 1
                    return event
                if event["type"] == "error" and kind != "error":
                    self._seen = i + 1
                    raise RuntimeError(f"server error: {event['body']}")
            return None

        async with asyncio.timeout(timeout_s), self._arrived:
            while (event := find()) is None:
                if self._reader.done():
                    raise ConnectionError(f"closed ({self.close_code}) before {kind}")
                await self._arrived.wait()
            return event

    async def say(self, text: str) -> None:
        await self.ws.send(text)

    async def control(self, kind: str, **fields: Any) -> float:
        """Send a control message; returns when it was sent."""
        await self.ws.send(json.dumps({"type": kind, **fields}))
        return time.monotonic()

    def audio(self, since: float = 0.0) -> bytes:
        return b"".join(r.audio for r in self.received if r.audio and r.at >= since)

    def first_audio_after(self, t: float) -> float | None:
        return next((r.at for r in self.received if r.audio and r.at >= t), None)

    async def wait_audio(self, since: float, timeout_s: float = 120.0) -> float:
        """When the first audio frame at or after ``since`` arrived (waits for it)."""
        async with asyncio.timeout(timeout_s), self._arrived:
            while (at := self.first_audio_after(since)) is None:
                if self._reader.done():
                    raise ConnectionError(f"closed ({self.close_code}) before audio")
                await self._arrived.wait()
            return at

    async def wait_closed(self, timeout_s: float = 10.0) -> int | None:
        """Wait for the server to close (after ``session_done``); its close code."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout_s)
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> EventSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()] or [text]


async def _turns(session: EventSession, turns: list[str], interactive: bool) -> None:
    """Speak each turn (``flush``), or read turns from stdin; then ``end``."""
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        if interactive:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            line = line.strip()
            if line == "/clear":
                await session.control("clear")
                await session.wait_for("cleared")
                print("cleared")
                continue
            if line.startswith("/voice "):
                await session.control("update", voice=line.split(maxsplit=1)[1])
                continue
        elif n == len(turns):
            break
        else:
            line = turns[n]
        n += 1
        await session.say(line + " ")
        sent = await session.control("flush", id=n)
        await session.wait_for("flush_done")
        first = session.first_audio_after(sent)
        ms = f"{(first - sent) * 1000:.0f} ms" if first else "no audio"
        print(f"turn {n}: flush -> first audio {ms}")
    await session.control("end")
    done = await session.wait_for("session_done")
    print(f"session done: {done['generations']} generations, {done['audio_s']:.2f} s of audio")
    await session.wait_closed()


async def run_events(url: str, config: dict[str, Any], api_key: str | None, text: str,
                     interactive: bool) -> tuple[bytes, int | None, dict[str, Any]]:  # fmt: skip
    async with await EventSession.open(url, config, api_key) as session:
        await _turns(session, _paragraphs(text), interactive)
    return session.audio(), session.close_code, session.created


def write_wav(path: Path, pcm: bytes, rate: int = SAMPLE_RATE_HZ) -> None:
    """PCM s16le mono → a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(BYTES_PER_SAMPLE)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def session_config(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {
        "voice": args.voice,
        "max_tokens": args.max_tokens,
        "buffer_size": args.buffer_size,
    }
    for name in ("temperature", "top_p", "repetition_penalty"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    if args.format != "pcm_s16le":
        config["response_format"] = args.format
    if args.rate:
        config["sample_rate"] = args.rate
    return config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="WebSocket URL (default: local serve.py on port 8080)")
    target.add_argument("--model-id", help="Baseten model id (builds the wss:// URL)")
    parser.add_argument("--environment", default="production", help="Baseten environment")
    parser.add_argument("--deployment-id", help="a specific Baseten deployment instead")
    parser.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help="Baseten API key (default: $BASETEN_API_KEY)",
    )
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", type=Path, help="file with the text to speak")
    parser.add_argument("--voice", default="tara")
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--buffer-size", type=int, default=10)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--repetition-penalty", type=float)
    parser.add_argument(
        "--word-interval-ms", type=float, default=0.0, help="pause between words (LLM-like)"
    )
    parser.add_argument(
        "--format",
        default="pcm_s16le",
        choices=["pcm_s16le", "pcm_f32le", "mulaw", "alaw", "wav", "mp3", "opus"],
        help="response_format (pcm_s16le is saved as WAV, the others as they come)",
    )
    parser.add_argument("--rate", type=int, help="sample_rate (default 24000; mulaw/alaw 8000)")
    parser.add_argument("--events", action="store_true", help="the event protocol, turn by turn")
    parser.add_argument(
        "--interactive", action="store_true", help="with --events: turns from stdin"
    )
    parser.add_argument("--out", type=Path, default=Path("tts_output.wav"), help="file to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.model_id:
        url = baseten_url(args.model_id, args.environment, args.deployment_id)
        if not args.api_key:
            print("a Baseten URL needs --api-key or BASETEN_API_KEY", file=sys.stderr)
            return 2
    else:
        url = args.url or "ws://127.0.0.1:8080/v1/websocket"
    text = args.text_file.read_text() if args.text_file else (args.text or DEFAULT_TEXT)
    if args.events or args.interactive:
        audio, code, created = asyncio.run(
            run_events(url, session_config(args), args.api_key, text, args.interactive)
        )
        _save(args, audio, created["sample_rate"])
        print(f"close code: {code}")
        return 0 if code == 1000 else 1
    result = asyncio.run(
        stream_tts(
            url,
            text,
            config=session_config(args),
            api_key=args.api_key,
            word_interval_s=args.word_interval_ms / 1000,
        )
    )
    if result.error:
        print(f"server error: {json.dumps(result.error)} (close {result.close_code})")
        return 1
    _save(args, bytes(result.pcm), args.rate or SAMPLE_RATE_HZ)
    ttfa = result.time_to_first_audio_s
    rtf = result.real_time_factor
    print(f"audio: {result.audio_s:.2f} s in {len(result.frame_sizes)} frames -> {args.out}")
    print(f"time to first audio: {ttfa * 1000:.0f} ms" if ttfa is not None else "no audio")
    print(f"real-time factor: {rtf:.3f}" if rtf is not None else "real-time factor: n/a")
    print(f"close code: {result.close_code}")
    return 0 if result.close_code == 1000 else 1


def _save(args: argparse.Namespace, audio: bytes, rate: int) -> None:
    if args.format == "pcm_s16le":
        write_wav(args.out, audio, rate)
    else:
        args.out.write_bytes(audio)


if __name__ == "__main__":
    sys.exit(main())
