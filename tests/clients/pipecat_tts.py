"""Pipecat's FishAudioTTSService and TogetherTTSService (pipecat-ai), unchanged, driven as pipecat's
own tests drive a service (``pipecat.tests.utils.run_test``), against the local server: an LLM's
three-sentence reply, and a barge-in (``InterruptionFrame``) in the middle of a long one."""

from __future__ import annotations

import sys

from _result import API_KEY, Result, parser, run
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.services.fish.tts import FishAudioTTSService
from pipecat.services.together.tts import TogetherTTSService
from pipecat.tests.utils import SleepFrame, run_test

REPLY = ["Hi there. ", "How are you? ", "I am fine."]
LONG_REPLY = "A long answer that keeps the engine busy for quite a while now, " * 2 + "doesn't it?"
AFTER = "Okay, go ahead."
BARGE_IN_AFTER_S = 4.0  # long enough for the first audio on a 2-core CPU


def fish_service(url: str) -> FishAudioTTSService:
    api_key = API_KEY
    # --- docs:pipecat-fish ---
    tts = FishAudioTTSService(api_key=api_key)
    tts._base_url = url  # pipecat hard-codes wss://api.fish.audio/v1/tts/live; no parameter
    # --- end ---
    return tts


def together_service(url: str) -> TogetherTTSService:
    api_key = API_KEY
    # --- docs:pipecat-together ---
    tts = TogetherTTSService(
        api_key=api_key,
        url=url,
        settings=TogetherTTSService.Settings(model="canopylabs/orpheus-3b-0.1-ft", voice="tara"),
    )
    # --- end ---
    return tts


def reply(texts: list[str]) -> list[Frame]:
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(t) for t in texts),
        LLMFullResponseEndFrame(),
    ]


async def case(service: str, url: str, which: str, result: Result) -> None:
    tts = fish_service(url) if service == "fish" else together_service(url)
    if which == "reply":
        frames = reply(REPLY)
    else:
        frames = [*reply([LONG_REPLY]), SleepFrame(sleep=BARGE_IN_AFTER_S), InterruptionFrame(),
                  *reply([AFTER])]  # fmt: skip
    down, up = await run_test(tts, frames_to_send=frames)
    audio: dict[str, bytearray] = {}
    rates = set()
    for frame in down:
        kind = type(frame).__name__
        context = getattr(frame, "context_id", None)
        if isinstance(frame, TTSAudioRawFrame):
            audio.setdefault(context or "", bytearray()).extend(frame.audio)
            rates.add(frame.sample_rate)
            result.event(kind=kind, context_id=context, bytes=len(frame.audio))
        elif isinstance(frame, TTSStartedFrame | TTSStoppedFrame | InterruptionFrame):
            result.event(kind=kind, context_id=context)
        elif isinstance(frame, ErrorFrame):
            result.event(kind=kind, error=frame.error)
        elif isinstance(frame, LLMFullResponseEndFrame | LLMFullResponseStartFrame):
            result.event(kind=kind)
    result.data["errors"] = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]
    result.data["rates"] = sorted(rates)
    for n, (context, pcm) in enumerate(audio.items()):
        result.audio(f"context{n}.pcm", bytes(pcm), "s16le", sample_rate=min(rates),
                     channels=[1], context_id=context)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, ["fish-reply", "fish-interrupt", "together-reply", "together-interrupt"])
    args = p.parse_args(argv)
    service, which = args.case.split("-")
    result = Result(args.out)
    return run(result, lambda: case(service, args.url, which, result))


if __name__ == "__main__":
    sys.exit(main())
