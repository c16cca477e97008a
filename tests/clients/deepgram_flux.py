"""Deepgram Flux's real clients, unchanged but for their URL and key, streaming real speech to the
local whisper server over Flux's turn-based protocol (``/v2/listen``): LiveKit Agents'
``deepgram.STTv2`` (livekit-plugins-deepgram), pipecat's ``DeepgramFluxSTTService``, driven as
pipecat's own tests drive a service (``pipecat.tests.utils.run_test``), and the deepgram-sdk's
own ``listen.v2`` (the ``sdk`` case: ``ForceEndTurn`` after the speech, a ``Configure``, then
``CloseStream`` once the turn ended).

Audio goes out at real-time pace (20 ms frames, which LiveKit re-chunks to its 50 ms), then
silence past the turn's timeout (``eot_timeout_ms`` 2000, set through each client's own option),
so the turn ends whatever the turn model says; pipecat asks for eager ends of turn. LiveKit then
ends its input (``CloseStream``) and reads until the server closes; pipecat's pipeline ends once
the turn's final came (it sends ``CloseStream`` and closes). ``result.json`` holds the finals,
the events in order and any error."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from _result import API_KEY, Result, parser, run
from _speech import livekit_stream, paced, pipecat_audio, pipecat_run, read_pcm

EOT_TIMEOUT_MS = 2000
TRAILING_SILENCE_S = EOT_TIMEOUT_MS / 1000 + 1.0  # the turn ends within it, by model or timeout
FINAL_WAIT_S = 20.0  # pipecat: keep the pipeline running until the turn's final came
FORCE_AFTER_S = 0.2  # the SDK case: ForceEndTurn this long after the speech, inside the pause
# The SDK case: the most it waits for ForceEndTurn's EndOfTurn before CloseStream (sending
# nothing for 10 s would close the stream: NET-0001, as Deepgram does).
FORCE_END_WAIT_S = 8.0


async def livekit_case(url: str, sample: str, result: Result) -> None:
    from livekit.plugins import deepgram

    pcm, rate = read_pcm(sample, TRAILING_SILENCE_S)
    api_key = API_KEY
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-flux ---
        stt = deepgram.STTv2(
            api_key=api_key, base_url=url, http_session=http_session, eot_timeout_ms=2000
        )
        stream = stt.stream()
        # --- end ---

        await livekit_stream(stt, stream, pcm, rate, result)


async def pipecat_case(url: str, sample: str, result: Result) -> None:
    from pipecat.frames.frames import TranscriptionFrame
    from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService

    pcm, rate = read_pcm(sample, TRAILING_SILENCE_S)
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

    # The turn's final: pipecat's TranscriptionFrame, pushed at EndOfTurn.
    await pipecat_run(stt, pipecat_audio(pcm, rate),
                      lambda frame: isinstance(frame, TranscriptionFrame), FINAL_WAIT_S, result,
                      also=("EagerTranscriptionFrame", "EagerEndOfTurnCancelFrame"))  # fmt: skip


async def sdk_case(url: str, sample: str, result: Result) -> None:
    """The deepgram-sdk's own ``listen.v2`` client: its typed messages, ``ForceEndTurn`` right
    after the speech (the turn ends by hand), a ``Configure``, then ``CloseStream``."""
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    pcm, rate = read_pcm(sample, FORCE_AFTER_S)
    api_key = API_KEY
    http = url.replace("ws", "http", 1)
    # --- docs:sdk-flux ---
    environment = DeepgramClientEnvironment(base=http, production=url, agent=url, agent_rest=http)
    client = AsyncDeepgramClient(api_key=api_key, environment=environment)
    async with client.listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate="16000"
    ) as connection:
        # --- end ---

        turn_ended = asyncio.Event()

        async def send() -> None:
            async for chunk in paced(pcm, rate):
                await connection.send_media(chunk)
            await connection.send_force_end_turn()
            await connection.send_configure({"type": "Configure", "keyterms": ["printing"]})
            await asyncio.wait_for(turn_ended.wait(), FORCE_END_WAIT_S)
            await connection.send_close_stream()

        sender = asyncio.create_task(send())
        finals = []
        async with asyncio.timeout(60):
            async for message in connection:
                event = getattr(message, "event", None)
                result.event(type=message.type, event=event,
                             text=getattr(message, "transcript", None),
                             trigger=getattr(message, "trigger", None))  # fmt: skip
                if event == "EndOfTurn":
                    finals.append(message.transcript)
                    turn_ended.set()
        await sender
        result.data["finals"] = finals


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["livekit", "pipecat", "sdk"]).parse_args(argv)
    result = Result(args.out)
    cases = {"livekit": livekit_case, "pipecat": pipecat_case, "sdk": sdk_case}
    case = cases[args.case]
    return run(result, lambda: case(args.url, str(args.sample), result))


if __name__ == "__main__":
    sys.exit(main())
