"""LiveKit Agents' Baseten plugin (livekit-plugins-baseten), unchanged, against the local server:
``baseten.STT`` (whisper), ``baseten.TTS`` over the WebSocket and over HTTPS predict (orpheus)."""

from __future__ import annotations

import asyncio
import sys
import time
import wave

import aiohttp
from _result import API_KEY, Result, parser, run
from livekit import rtc
from livekit.agents import stt as lk_stt
from livekit.plugins import baseten

# An LLM's reply as it streams in: three sentences in word deltas.
REPLY_DELTAS = ["Hello ", "there, ", "friend. ", "This ", "is ", "the ", "second ", "sentence. ",
                "And ", "here ", "is ", "the ", "third ", "one."]  # fmt: skip
LONG_REPLY = "A long answer that keeps the engine busy for quite a while now. " * 3


async def stt_case(url: str, sample: str, result: Result) -> None:
    with wave.open(sample) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    pcm += b"\0\0" * int(rate * 1.5)  # trailing silence: the server's VAD ends the utterance
    api_key = API_KEY
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-stt ---
        stt = baseten.STT(api_key=api_key, model_endpoint=url, http_session=http_session)
        stream = stt.stream()
        # --- end ---
        step = rate // 50 * 2  # 20 ms frames
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step]
            stream.push_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        finals = []
        async with asyncio.timeout(60):
            async for event in stream:
                text = event.alternatives[0].text if event.alternatives else ""
                result.event(type=event.type.value, text=text)
                if event.type == lk_stt.SpeechEventType.FINAL_TRANSCRIPT:
                    finals.append(text)
                    break
        result.data["final"] = " ".join(finals)
        await stream.aclose()
        await stt.aclose()


def _record_frames(result: Result, events: list, name: str) -> None:
    rates = {e.frame.sample_rate for e in events}
    channels = {e.frame.num_channels for e in events}
    pcm = b"".join(bytes(e.frame.data) for e in events)
    for e in events:
        result.event(segment_id=e.segment_id, request_id=e.request_id, is_final=e.is_final,
                     samples=e.frame.samples_per_channel)  # fmt: skip
    result.audio(name, pcm, "s16le", sample_rate=min(rates, default=0),
                 rates=sorted(rates), channels=sorted(channels))  # fmt: skip


async def tts_ws_case(url: str, result: Result) -> None:
    api_key = API_KEY
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-tts-ws ---
        tts = baseten.TTS(api_key=api_key, model_endpoint=url, http_session=http_session)
        stream = tts.stream()
        # --- end ---
        for delta in REPLY_DELTAS:
            stream.push_text(delta)
        stream.end_input()
        async with asyncio.timeout(90):
            events = [event async for event in stream]
        _record_frames(result, events, "reply.pcm")
        await tts.aclose()


async def tts_ws_abort_case(url: str, result: Result) -> None:
    """Barge-in: the agent closes the stream as soon as the first audio plays."""
    async with aiohttp.ClientSession() as http_session:
        tts = baseten.TTS(api_key=API_KEY, model_endpoint=url, http_session=http_session)
        stream = tts.stream()
        stream.push_text(LONG_REPLY)
        stream.end_input()
        async with asyncio.timeout(60):
            first = await stream.__anext__()
        result.event(kind="first_audio", samples=first.frame.samples_per_channel)
        await stream.aclose()
        result.data["closed_at"] = time.time()
        late = 0
        async with asyncio.timeout(5):
            async for _ in stream:  # a closed stream ends at once
                late += 1
        result.data["frames_after_close"] = late
        await tts.aclose()


async def tts_http_case(url: str, result: Result) -> None:
    api_key = API_KEY
    text = "".join(REPLY_DELTAS)
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-tts-http ---
        tts = baseten.TTS(api_key=api_key, model_endpoint=url, http_session=http_session)
        chunked = tts.synthesize(text)
        # --- end ---
        async with asyncio.timeout(90):
            events = [event async for event in chunked]
        _record_frames(result, events, "reply.pcm")
        await tts.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["stt", "tts-ws", "tts-ws-abort", "tts-http"]).parse_args(argv)
    result = Result(args.out)
    cases = {
        "stt": lambda: stt_case(args.url, str(args.sample), result),
        "tts-ws": lambda: tts_ws_case(args.url, result),
        "tts-ws-abort": lambda: tts_ws_abort_case(args.url, result),
        "tts-http": lambda: tts_http_case(args.url, result),
    }
    return run(result, cases[args.case])


if __name__ == "__main__":
    sys.exit(main())
