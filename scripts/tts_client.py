#!/usr/bin/env python
"""Stream text word by word to the Orpheus TTS WebSocket and save the audio as a WAV file.

Local:   python scripts/tts_client.py --url ws://127.0.0.1:8080/v1/websocket --text "Hi there."
Baseten: python scripts/tts_client.py --model-id abc123 --text-file speech.txt --out speech.wav
         (API key from --api-key or BASETEN_API_KEY, sent as ``Authorization: Api-Key ...``)

Speaks Baseten's published protocol: a JSON first frame, one text frame per word, ``__END__``;
binary PCM s16le 24 kHz mono frames come back until the server closes. Prints the time to first
audio and the real-time factor (wall time / audio duration; below 1 is faster than real time).
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

import aiohttp

logger = logging.getLogger("tts_client")

SAMPLE_RATE_HZ = 24_000
BYTES_PER_SAMPLE = 2
END_OF_INPUT = "__END__"
DEFAULT_TEXT = (
    "Hello there! This is Orpheus, streaming speech as the words arrive. "
    "Each sentence starts playing before the next one has been written. <laugh> Pretty neat."
)
# Baseten answers 503 at the handshake while a deployment loads or wakes from zero.
HANDSHAKE_RETRY_STATUSES = {502, 503, 504}
HANDSHAKE_ATTEMPTS = 8
HANDSHAKE_BACKOFF_S = 2.0
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
    error: dict[str, Any] | None = None

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


def baseten_url(model_id: str, environment: str | None, deployment_id: str | None) -> str:
    """The WebSocket URL of a Baseten model (an environment, or one deployment)."""
    base = f"wss://model-{model_id}.api.baseten.co"
    if deployment_id:
        return f"{base}/deployment/{deployment_id}/websocket"
    return f"{base}/environments/{environment or 'production'}/websocket"


async def _connect(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> aiohttp.ClientWebSocketResponse:
    for attempt in range(1, HANDSHAKE_ATTEMPTS + 1):
        try:
            return await session.ws_connect(url, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status not in HANDSHAKE_RETRY_STATUSES or attempt == HANDSHAKE_ATTEMPTS:
                raise
            delay = HANDSHAKE_BACKOFF_S * attempt
            logger.info("handshake got %s (loading?); retrying in %.0f s", exc.status, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def stream_tts(
    url: str,
    text: str,
    *,
    config: dict[str, Any],
    api_key: str | None = None,
    word_interval_s: float = 0.0,
) -> TTSResult:
    """One session: send ``config``, then each word of ``text``, then ``__END__``; collect audio."""
    result = TTSResult()
    headers = {"Authorization": f"Api-Key {api_key}"} if api_key else {}
    words = text.split()
    first_sentence_end = next(
        (i for i, w in enumerate(words) if _SENTENCE_END.search(w)), len(words) - 1
    )
    async with aiohttp.ClientSession() as http:
        ws = await _connect(http, url, headers)
        result.connected_at = time.monotonic()

        async def send() -> None:
            await ws.send_json(config)
            for i, word in enumerate(words):
                await ws.send_str(word)
                now = time.monotonic()
                if i == 0:
                    result.first_word_at = now
                if i == first_sentence_end + 1:
                    result.first_sentence_released_at = now
                if word_interval_s:
                    await asyncio.sleep(word_interval_s)
            await ws.send_str(END_OF_INPUT)
            result.end_sent_at = time.monotonic()
            if not result.first_sentence_released_at:
                result.first_sentence_released_at = result.end_sent_at
            if not result.first_word_at:
                result.first_word_at = result.end_sent_at

        sender = asyncio.create_task(send())
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY:
                    result.frame_times.append(time.monotonic())
                    result.frame_sizes.append(len(message.data))
                    result.pcm.extend(message.data)
                elif message.type == aiohttp.WSMsgType.TEXT:
                    result.error = json.loads(message.data)
                elif message.type == aiohttp.WSMsgType.ERROR:
                    break
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await ws.close()
        result.closed_at = time.monotonic()
        result.close_code = ws.close_code
    return result


def write_wav(path: Path, pcm: bytes) -> None:
    """PCM s16le 24 kHz mono → a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(BYTES_PER_SAMPLE)
        wav.setframerate(SAMPLE_RATE_HZ)
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
        default=os.environ.get("BASETEN_API_KEY"),
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
    parser.add_argument("--out", type=Path, default=Path("tts_output.wav"), help="WAV to write")
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
    write_wav(args.out, bytes(result.pcm))
    ttfa = result.time_to_first_audio_s
    rtf = result.real_time_factor
    print(f"audio: {result.audio_s:.2f} s in {len(result.frame_sizes)} frames -> {args.out}")
    print(f"time to first audio: {ttfa * 1000:.0f} ms" if ttfa is not None else "no audio")
    print(f"real-time factor: {rtf:.3f}" if rtf is not None else "real-time factor: n/a")
    print(f"close code: {result.close_code}")
    return 0 if result.close_code == 1000 else 1


if __name__ == "__main__":
    sys.exit(main())
