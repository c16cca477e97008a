"""What the STT client scripts share: a WAV as 16-bit PCM with trailing silence, cut into 20 ms
frames and paced at real time, and a LiveKit STT stream or pipecat's test pipeline fed so with
their events collected. Standard library only at import (these scripts run in .venv-clients)."""

from __future__ import annotations

import asyncio
import itertools
import time
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any

from _result import Result

FRAME_S = 0.02


def read_pcm(path: str, silence_s: float) -> tuple[bytes, int]:
    """16-bit mono PCM and its rate, with ``silence_s`` of trailing silence."""
    with wave.open(path) as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    return pcm + b"\0\0" * int(rate * silence_s), rate


def chunks(pcm: bytes, rate: int) -> list[bytes]:
    step = int(rate * FRAME_S) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def paced(pcm: bytes, rate: int) -> AsyncIterator[bytes]:
    """The 20 ms frames, each when real time reaches it."""
    t0 = time.monotonic()
    for i, chunk in enumerate(chunks(pcm, rate)):
        await asyncio.sleep(max(t0 + i * FRAME_S - time.monotonic(), 0))
        yield chunk


async def livekit_stream(stt: Any, stream: Any, pcm: bytes, rate: int, result: Result) -> None:
    """Push the audio into a LiveKit ``SpeechStream`` at real-time pace, then end its input;
    record every event (but usage) as it comes and the final transcripts (``finals``), then
    close the STT."""
    from livekit import rtc
    from livekit.agents import stt as lk_stt

    async def push() -> None:
        async for chunk in paced(pcm, rate):
            stream.push_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        stream.end_input()

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


def pipecat_audio(pcm: bytes, rate: int) -> list:
    """pipecat's input frames for the audio: each 20 ms chunk, then a sleep of as long."""
    from pipecat.frames.frames import InputAudioRawFrame
    from pipecat.tests.utils import SleepFrame

    return [frame for chunk in chunks(pcm, rate)
            for frame in (InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1),
                          SleepFrame(sleep=FRAME_S))]  # fmt: skip


async def pipecat_run(
    stt: Any,
    frames: list,
    answered: Callable[[Any], bool],
    wait_s: float,
    result: Result,
    also: tuple[str, ...] = (),
) -> None:
    """Run pipecat's test pipeline over ``stt``: the frames, then 0.1 s sleeps until a pushed
    frame is ``answered`` (or ``wait_s`` passed); record every transcript, interim and error
    (and the frames named in ``also``) as events, the finals and errors in ``result.data``."""
    from pipecat.frames.frames import ErrorFrame, InterimTranscriptionFrame, TranscriptionFrame
    from pipecat.observers.base_observer import BaseObserver
    from pipecat.tests.utils import SleepFrame, run_test

    class Answered(BaseObserver):
        seen = False

        async def on_push_frame(self, data) -> None:
            if answered(data.frame):
                Answered.seen = True

    def until_answered():
        for _ in range(int(wait_s / 0.1)):
            if Answered.seen:
                return
            yield SleepFrame(sleep=0.1)

    # run_test iterates frames_to_send as it sends them: the wait is decided as it goes.
    sent = itertools.chain(frames, until_answered())
    down, up = await run_test(stt, frames_to_send=sent, observers=[Answered()])
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
        elif name in also:
            result.event(type=name)
    result.data["finals"] = finals
    result.data["errors"] = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]
