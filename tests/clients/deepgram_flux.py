"""Deepgram Flux's real clients, unchanged but for their URL and key, streaming real speech to the
local whisper server over Flux's turn-based protocol (``/v2/listen``): LiveKit Agents'
``deepgram.STTv2`` (livekit-plugins-deepgram) and pipecat's ``DeepgramFluxSTTService``, driven as
pipecat's own tests drive a service (``pipecat.tests.utils.run_test``).

Audio goes out at real-time pace (20 ms frames, which LiveKit re-chunks to its 50 ms), then
silence past the turn's timeout (``eot_timeout_ms`` 2000, set through each client's own option),
so the turn ends whatever the turn model says; pipecat asks for eager ends of turn. LiveKit then
ends its input (``CloseStream``) and reads until the server closes; pipecat's pipeline ends once
the turn's final came (it sends ``CloseStream`` and closes). ``result.json`` holds the finals,
the events in order and any error."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import wave

import aiohttp
from _result import API_KEY, Result, parser, run

FRAME_S = 0.02
EOT_TIMEOUT_MS = 2000
TRAILING_SILENCE_S = EOT_TIMEOUT_MS / 1000 + 1.0  # the turn ends within it, by model or timeout
FINAL_WAIT_S = 20.0  # pipecat: keep the pipeline running until the turn's final came


def read_pcm(path: str, silence_s: float = TRAILING_SILENCE_S) -> tuple[bytes, int]:
    """16-bit mono PCM and its rate, with trailing silence."""
    with wave.open(path) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    return pcm + b"\0\0" * int(rate * silence_s), rate


def chunks(pcm: bytes, rate: int) -> list[bytes]:
    step = int(rate * FRAME_S) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def livekit_case(url: str, sample: str, result: Result) -> None:
    from livekit import rtc
    from livekit.agents import stt as lk_stt
    from livekit.plugins import deepgram

    pcm, rate = read_pcm(sample)
    api_key = API_KEY
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-flux ---
        stt = deepgram.STTv2(
            api_key=api_key, base_url=url, http_session=http_session, eot_timeout_ms=2000
        )
        stream = stt.stream()
        # --- end ---

        async def push() -> None:
            t0 = time.monotonic()
            for i, chunk in enumerate(chunks(pcm, rate)):
                await asyncio.sleep(max(t0 + i * FRAME_S - time.monotonic(), 0))
                stream.push_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
            stream.end_input()  # CloseStream; the server closes

        pusher = asyncio.create_task(push())
        finals = []
        async with asyncio.timeout(60):
            async for event in stream:
                kind = event.type
                if kind == lk_stt.SpeechEventType.RECOGNITION_USAGE:
                    continue
                text = event.alternatives[0].text if event.alternatives else ""
                words = len(event.alternatives[0].words or []) if event.alternatives else 0
                result.event(type=kind.value, text=text, words=words)
                if kind == lk_stt.SpeechEventType.FINAL_TRANSCRIPT:
                    finals.append(text)
        await pusher
        result.data["finals"] = finals
        await stt.aclose()


async def pipecat_case(url: str, sample: str, result: Result) -> None:
    from pipecat.frames.frames import (
        ErrorFrame,
        InputAudioRawFrame,
        InterimTranscriptionFrame,
        TranscriptionFrame,
    )
    from pipecat.observers.base_observer import BaseObserver
    from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
    from pipecat.tests.utils import SleepFrame, run_test

    pcm, rate = read_pcm(sample)
    api_key = API_KEY
    # --- docs:pipecat-flux ---
    stt = DeepgramFluxSTTService(
        api_key=api_key,
        url=url,
        sample_rate=16000,
        enable_eager_end_of_turn=True,
        settings=DeepgramFluxSTTService.Settings(eot_timeout_ms=2000),
    )
    # --- end ---

    def audio(data: bytes) -> list:
        return [frame for chunk in chunks(data, rate)
                for frame in (InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1),
                              SleepFrame(sleep=FRAME_S))]  # fmt: skip

    class TurnEnded(BaseObserver):
        """Sees the turn's final (pipecat's ``TranscriptionFrame``, pushed at EndOfTurn)."""

        seen = False

        async def on_push_frame(self, data) -> None:
            if isinstance(data.frame, TranscriptionFrame):
                TurnEnded.seen = True

    def until_turn_ended():
        for _ in range(int(FINAL_WAIT_S / 0.1)):
            if TurnEnded.seen:
                return
            yield SleepFrame(sleep=0.1)

    sent = itertools.chain(audio(pcm), until_turn_ended())
    down, up = await run_test(stt, frames_to_send=sent, observers=[TurnEnded()])
    finals = []
    for frame in [*down, *up]:
        name = type(frame).__name__
        if isinstance(frame, TranscriptionFrame):
            finals.append(frame.text)
            result.event(type=name, text=frame.text, finalized=frame.finalized)
        elif isinstance(frame, InterimTranscriptionFrame):
            result.event(type=name, text=frame.text)
        elif isinstance(frame, ErrorFrame):
            result.event(type=name, error=frame.error)
        elif name in ("EagerTranscriptionFrame", "EagerEndOfTurnCancelFrame"):
            result.event(type=name)
    result.data["finals"] = finals
    result.data["errors"] = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["livekit", "pipecat"]).parse_args(argv)
    result = Result(args.out)
    case = livekit_case if args.case == "livekit" else pipecat_case
    return run(result, lambda: case(args.url, str(args.sample), result))


if __name__ == "__main__":
    sys.exit(main())
