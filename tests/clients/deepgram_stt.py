"""Deepgram's real clients, unchanged but for their URL and key, streaming real speech to the local
whisper server over Deepgram's live protocol: LiveKit Agents' ``deepgram.STT``
(livekit-plugins-deepgram) and pipecat's ``DeepgramSTTService`` (deepgram-sdk under it), driven
as pipecat's own tests drive a service (``pipecat.tests.utils.run_test``).

Audio goes out at real-time pace (20 ms frames), then each client ends the way it does in an
agent. LiveKit: 1.5 s of silence (the server's VAD ends the utterance: ``speech_final``), then
the stream is flushed (``Finalize``) and closed (``CloseStream``). Pipecat: its VAD says the user
stopped speaking 0.2 s after the speech (its default ``stop_secs``), before the server's own
endpointing, so the ``Finalize`` it sends then cuts the last utterance (``from_finalize``);
silence goes on streaming, and ``CloseStream`` comes at the pipeline's end. ``result.json``
holds the finals, the events in order and any error."""

from __future__ import annotations

import sys

import aiohttp
from _result import API_KEY, Result, parser, run
from _speech import livekit_stream, pipecat_audio, pipecat_run, read_pcm

TRAILING_SILENCE_S = 1.5  # the server's VAD ends the utterance (speech_final) within it
PIPECAT_STOP_S = 0.2  # pipecat's VADParams.stop_secs: its VAD's "user stopped speaking"
FINALIZE_WAIT_S = 20.0  # pipecat ends its stream at once at the pipeline's end: wait for the
# answer to its Finalize first, as an agent's pipeline would still be running


async def livekit_case(url: str, sample: str, result: Result) -> None:
    from livekit.plugins import deepgram

    pcm, rate = read_pcm(sample, TRAILING_SILENCE_S)
    api_key = API_KEY
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-deepgram ---
        stt = deepgram.STT(api_key=api_key, base_url=url, http_session=http_session)
        stream = stt.stream()
        # --- end ---

        await livekit_stream(stt, stream, pcm, rate, result)


async def pipecat_case(url: str, sample: str, result: Result) -> None:
    from pipecat.frames.frames import (
        TranscriptionFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.services.deepgram.stt import DeepgramSTTService

    pcm, rate = read_pcm(sample, PIPECAT_STOP_S)
    silence = b"\0\0" * int(rate * (TRAILING_SILENCE_S - PIPECAT_STOP_S))
    api_key = API_KEY
    # --- docs:pipecat-deepgram ---
    stt = DeepgramSTTService(api_key=api_key, base_url=url)
    # --- end ---

    # Speech, then pipecat's VAD: the user stopped speaking (Finalize); the audio goes on, until
    # the final that answers the Finalize (pipecat marks it ``finalized``).
    frames = [VADUserStartedSpeakingFrame(), *pipecat_audio(pcm, rate),
              VADUserStoppedSpeakingFrame(), *pipecat_audio(silence, rate)]  # fmt: skip
    await pipecat_run(stt, frames,
                      lambda frame: isinstance(frame, TranscriptionFrame) and frame.finalized,
                      FINALIZE_WAIT_S, result)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["livekit", "pipecat"]).parse_args(argv)
    result = Result(args.out)
    case = livekit_case if args.case == "livekit" else pipecat_case
    return run(result, lambda: case(args.url, str(args.sample), result))


if __name__ == "__main__":
    sys.exit(main())
