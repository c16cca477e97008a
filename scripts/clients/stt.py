#!/usr/bin/env python
"""Stream a WAV file (or the microphone) to a streaming-Whisper WebSocket and print transcripts.

    python scripts/clients/stt.py ws://127.0.0.1:8080/v1/websocket samples/speech_en.wav
    python scripts/clients/stt.py wss://model-XXXX.api.baseten.co/environments/production/websocket \\
        samples/speech_en.wav            # API key from BASETEN_API_KEY or --api-key
    python scripts/clients/stt.py URL --mic   # needs the optional `sounddevice` package

Real-time paced by default (512-sample frames every 32 ms, like the published client); ``--fast``
sends as fast as the socket takes it. Prints partials and finals with their arrival times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
import websockets
from websockets.asyncio.client import ClientConnection

from scripts.clients.auth import API_KEY_ENV
from scripts.clients.connect import (
    DEFAULT_CONNECT_BUDGET_S,
    HANDSHAKE_BACKOFF_START_S,
    Handshake,
    open_websocket,
)
from speech_common.ws import CloseCode  # TRY_AGAIN_LATER: full or behind
from whisper_streaming.schema import DEFAULT_SAMPLE_RATE_HZ

FRAME_SAMPLES = 512  # the published client's frame: 32 ms at 16 kHz
CLIENT_RATE_HZ = DEFAULT_SAMPLE_RATE_HZ  # the published client sends 16 kHz


@dataclass
class Result:
    finals: list[dict] = field(default_factory=list)
    partials: list[dict] = field(default_factory=list)
    arrivals: list[tuple[float, dict]] = field(default_factory=list)  # (seconds since start, msg)
    first_partial_s: float | None = None
    first_final_s: float | None = None
    end_audio_sent_s: float | None = None  # when end_audio went out (seconds since start)
    finished: bool = False  # the server answered end_audio with "finished"
    timed_out: bool = False  # timeout_s passed before the server closed
    errors: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    handshake: Handshake = field(default_factory=Handshake)

    @property
    def refused(self) -> bool:
        """Admission control refused the session: it closed 1013 with nothing but the refusal
        (an error frame with a ``retry_after_s`` hint). The server accepts the socket before it
        decides, so the metadata frame usually goes out and the refusal is read here; a session
        that falls behind mid-stream also closes 1013, but without the retry hint."""
        return self.close_code == CloseCode.TRY_AGAIN_LATER and all(
            m.get("type") == "error" and "retry_after_s" in (m.get("body") or {})
            for _, m in self.arrivals
        )

    @property
    def retry_after_s(self) -> float | None:
        """A refusal's hint (its error frame's ``retry_after_s``): when a retry may succeed."""
        hints = ((m.get("body") or {}).get("retry_after_s") for m in self.errors)
        return next((h for h in hints if h is not None), None)

    @property
    def transcript(self) -> str:
        texts = (final_text(f) for f in self.finals)
        return " ".join(t for t in texts if t)


def final_text(final: dict) -> str:
    """A final's transcript (servers before ``transcript`` existed: its segments joined)."""
    text = final.get("transcript")
    if text is None:
        text = " ".join(seg.get("text", "") for seg in final.get("segments", []))
    return str(text).strip()


def read_wav(path: str | Path, rate: int = CLIENT_RATE_HZ) -> np.ndarray:
    """Mono int16 samples at ``rate`` from any PCM WAV (resampled with soxr)."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV is supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        channels, src_rate = w.getnchannels(), w.getframerate()
    audio = data.reshape(-1, channels).mean(axis=1).astype(np.float32) / 32768.0
    if src_rate != rate:
        audio = soxr.resample(audio, src_rate, rate)
    return (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2")


def v1_metadata(
    sample_rate: int = CLIENT_RATE_HZ, partials: bool = True, **whisper: object
) -> dict:
    """The published client's metadata (v1 shape)."""
    params = {
        "encoding": "pcm_s16le",
        "sample_rate": sample_rate,
        "enable_partial_transcripts": partials,
        "audio_language": "en",
        "show_word_timestamps": False,
    }
    params.update(whisper)
    return {
        "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
        "streaming_whisper_params": params,
    }


async def send_audio(
    ws: ClientConnection,
    frames: list[bytes],
    *,
    frame_s: float,
    realtime: bool = True,
    end_audio: bool = True,
    t0: float | None = None,
) -> None:
    """The sending half after the metadata: each frame (paced against the wall clock from
    ``t0`` when ``realtime``), then ``end_audio``."""
    t0 = time.monotonic() if t0 is None else t0
    for i, frame in enumerate(frames):
        if realtime:  # against the wall clock, so send jitter does not accumulate
            delay = t0 + i * frame_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(frame)
    if end_audio:
        await ws.send(json.dumps({"type": "end_audio"}))


async def stream(
    url: str,
    frames: list[bytes],
    metadata: dict,
    *,
    frame_s: float,
    realtime: bool = True,
    end_audio: bool = True,
    api_key: str | None = None,
    on_message=None,
    timeout_s: float = 120.0,
    connect_budget_s: float = DEFAULT_CONNECT_BUDGET_S,
    handshake_backoff_s: float = HANDSHAKE_BACKOFF_START_S,
) -> Result:
    """Send metadata, then frames (paced), then end_audio; collect messages until the server
    closes or ``timeout_s`` (from the first frame) passes (``timed_out``)."""
    result = Result()
    ws = await open_websocket(
        url,
        api_key,
        budget_s=connect_budget_s,
        backoff_s=handshake_backoff_s,
        handshake=result.handshake,
    )
    async with ws:
        t0 = time.monotonic()
        await ws.send(json.dumps(metadata))

        async def sender() -> None:
            await send_audio(
                ws, frames, frame_s=frame_s, realtime=realtime, end_audio=end_audio, t0=t0
            )
            if end_audio:
                result.end_audio_sent_s = time.monotonic() - t0

        send_task = asyncio.create_task(sender())
        try:
            async with asyncio.timeout(timeout_s):
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    msg = json.loads(raw)
                    now = time.monotonic() - t0
                    result.arrivals.append((now, msg))
                    if msg.get("type") == "transcription":
                        if msg["is_final"]:
                            result.finals.append(msg)
                            if result.first_final_s is None:
                                result.first_final_s = now
                        else:
                            result.partials.append(msg)
                            if result.first_partial_s is None:
                                result.first_partial_s = now
                    elif (
                        msg.get("type") == "end_audio"
                        and (msg.get("body") or {}).get("status") == "finished"
                    ):
                        result.finished = True
                    elif msg.get("type") == "error":
                        result.errors.append(msg)
                    if on_message:
                        on_message(now, msg)
        except TimeoutError:
            result.timed_out = True
        except websockets.ConnectionClosed:
            pass
        finally:
            send_task.cancel()
            await asyncio.gather(send_task, return_exceptions=True)
        result.close_code = ws.close_code
        result.close_reason = ws.close_reason or ""
    return result


def frames_of(samples: np.ndarray, frame_samples: int = FRAME_SAMPLES) -> list[bytes]:
    """Cut int16 samples into frames; the last one zero-padded (as the published client does)."""
    pad = (-len(samples)) % frame_samples
    padded = np.concatenate([samples, np.zeros(pad, samples.dtype)])
    data = padded.astype("<i2").tobytes()
    step = frame_samples * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


def _print(now: float, msg: dict) -> None:
    if msg.get("type") == "transcription":
        tag = "[final]  " if msg["is_final"] else "[partial]"
        print(f"{now:7.2f}s {tag} #{msg['transcription_num']}: {msg['transcript']}", flush=True)
    else:
        print(f"{now:7.2f}s {json.dumps(msg)}", flush=True)


async def _mic(url: str, metadata: dict, api_key: str | None) -> None:
    try:
        import sounddevice  # optional
    except ImportError:
        raise SystemExit("--mic needs `pip install sounddevice`") from None
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def callback(indata, _frames, _time, _status) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, bytes(indata))

    async with await open_websocket(url, api_key) as ws:
        await ws.send(json.dumps(metadata))
        t0 = time.monotonic()

        async def pump() -> None:
            with sounddevice.RawInputStream(
                samplerate=CLIENT_RATE_HZ,
                channels=1,
                dtype="int16",
                blocksize=FRAME_SAMPLES,
                callback=callback,
            ):
                while True:
                    await ws.send(await queue.get())

        task = asyncio.create_task(pump())
        try:
            async for raw in ws:
                _print(time.monotonic() - t0, json.loads(raw))
        finally:
            task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("wav", nargs="?", help="WAV file (any rate); omit with --mic")
    parser.add_argument("--mic", action="store_true", help="stream the microphone (sounddevice)")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible")
    parser.add_argument("--no-partials", action="store_true")
    parser.add_argument("--language", default="en", help='"auto" to detect')
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    args = parser.parse_args()
    metadata = v1_metadata(partials=not args.no_partials, audio_language=args.language)
    if args.mic:
        asyncio.run(_mic(args.url, metadata, args.api_key))
        return
    if not args.wav:
        parser.error("give a WAV file or --mic")
    samples = read_wav(args.wav)
    t0 = time.monotonic()
    result = asyncio.run(
        stream(
            args.url,
            frames_of(samples),
            metadata,
            frame_s=FRAME_SAMPLES / CLIENT_RATE_HZ,
            realtime=not args.fast,
            api_key=args.api_key,
            on_message=_print,
        )
    )
    print(f"\ntranscript: {result.transcript}")
    print(
        f"audio {len(samples) / CLIENT_RATE_HZ:.2f}s, wall {time.monotonic() - t0:.2f}s, "
        f"finals {len(result.finals)}, partials {len(result.partials)}, close {result.close_code}"
    )
    sys.exit(0 if result.finished and not result.errors else 1)


if __name__ == "__main__":
    main()
