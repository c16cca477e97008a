#!/usr/bin/env python
"""Runnable clients of the Orpheus truss's other dialects, as their vendors document them:
only the URL (and the key header) differ from talking to Together AI or Fish Audio.

    python scripts/clients/tts_dialects.py together --url ws://127.0.0.1:8080/v1/websocket
    python scripts/clients/tts_dialects.py fish --url wss://model-<id>.api.baseten.co/environments/production/websocket
    python scripts/clients/tts_dialects.py http --url https://model-<id>.api.baseten.co/environments/production/predict

(API key from --api-key or BASETEN_API_KEY, sent as ``Authorization: Api-Key ...``.) Each writes
the audio it got to --out and prints what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path

import msgpack

from orpheus_tts.settings import ORPHEUS_HF_REPO as MODEL
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.connect import http_client, open_websocket


async def together(url: str, text: str, api_key: str | None, alignment: bool = False) -> bytes:
    """Together's WebSocket example: settings in the query string, wait for session.created,
    append + commit, then an empty commit (the turn's end); base64 audio deltas until the
    item is done."""
    query = f"?model={MODEL}&voice=tara" + ("&alignment=word" if alignment else "")
    async with await open_websocket(url + query, api_key) as ws:
        session = json.loads(await ws.recv())
        print("session:", session["session"]["id"])
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": text}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        audio = bytearray()
        async for message in ws:
            data = json.loads(message)
            if data["type"] == "conversation.item.audio_output.delta":
                audio.extend(base64.b64decode(data["delta"]))
            elif data["type"] == "conversation.item.word_timestamps":
                print("words:", list(zip(data["words"], data["start_seconds"], strict=True)))
            elif data["type"] == "conversation.item.audio_output.done":
                break
            elif data["type"] in ("error", "conversation.item.tts.failed"):
                raise RuntimeError(data["error"])
        return bytes(audio)  # raw PCM s16le, 24 kHz, mono


async def fish(url: str, text: str, api_key: str | None, fmt: str = "mp3") -> bytes:
    """Fish Audio's live example: MessagePack start / text / stop; audio until finish."""
    async with await open_websocket(url, api_key) as ws:
        request = {"text": "", "format": fmt, "reference_id": "tara", "latency": "balanced"}
        await ws.send(msgpack.packb({"event": "start", "request": request}))
        await ws.send(msgpack.packb({"event": "text", "text": text}))
        await ws.send(msgpack.packb({"event": "stop"}))
        audio = bytearray()
        async for message in ws:
            data = msgpack.unpackb(message)
            if data["event"] == "audio":
                audio.extend(data["audio"])
            elif data["event"] == "error":
                raise RuntimeError(data["error"])
            elif data["event"] == "finish":
                break
        return bytes(audio)


async def http(url: str, text: str, api_key: str | None, fmt: str = "mp3") -> bytes:
    """The HTTP flavour: Together's speech request body; the audio file back."""
    body = {"model": MODEL, "input": text, "voice": "tara", "response_format": fmt}
    async with http_client(url, api_key) as session:
        response = await session.post(url, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.content[:300]!r}")
    return response.content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dialect", choices=["together", "fish", "http"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    parser.add_argument("--text", default="Hello from another vendor's client.")
    parser.add_argument("--out", type=Path, help="where the audio goes (default by dialect)")
    args = parser.parse_args(argv)
    client = {"together": together, "fish": fish, "http": http}[args.dialect]
    audio = asyncio.run(client(args.url, args.text, args.api_key))
    out = args.out or Path({"together": "together.pcm", "fish": "fish.mp3", "http": "http.mp3"}[
        args.dialect])  # fmt: skip
    out.write_bytes(audio)
    print(f"{len(audio)} bytes of audio -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
