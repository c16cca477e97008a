"""LiveKit Agents' Fish Audio plugin (livekit-plugins-fishaudio), unchanged, streaming over Fish's
live WebSocket against the local server; ``base_url`` ends in ``?_p=`` so the plugin's own path
(``/v1/tts/live``) lands in a query parameter the server ignores."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from _result import API_KEY, Result, parser, run
from livekit.plugins import fishaudio

REPLY = "Hello there, friend. This is the second sentence. And here is the third one."
LONG_REPLY = "A long answer that keeps the engine busy for quite a while now. " * 3


async def stream_case(url: str, case: str, result: Result) -> None:
    api_key = API_KEY
    options = {"default": {}, "mp3": {"output_format": "mp3"}, "pcm": {"output_format": "pcm"},
               "abort": {"output_format": "pcm"}}[case]  # fmt: skip
    async with aiohttp.ClientSession() as http_session:
        # --- docs:livekit-fish ---
        tts = fishaudio.TTS(api_key=api_key, base_url=url, http_session=http_session, **options)
        stream = tts.stream()
        # --- end ---
        result.data["asked"] = {"format": tts.output_format, "sample_rate": tts.sample_rate}
        stream.push_text(LONG_REPLY if case == "abort" else REPLY)
        stream.end_input()
        events = []
        async with asyncio.timeout(90):
            async for event in stream:
                events.append(event)
                if case == "abort":  # barge-in as soon as the first audio plays
                    await stream.aclose()
                    break
        if case == "abort":
            late = 0
            async with asyncio.timeout(5):
                async for _ in stream:
                    late += 1
            result.data["frames_after_close"] = late
        rates = sorted({e.frame.sample_rate for e in events})
        pcm = b"".join(bytes(e.frame.data) for e in events)
        result.audio("reply.pcm", pcm, "s16le", sample_rate=rates[0] if rates else 0, rates=rates,
                     channels=sorted({e.frame.num_channels for e in events}))  # fmt: skip
        for e in events:
            result.event(segment_id=e.segment_id, is_final=e.is_final,
                         samples=e.frame.samples_per_channel)  # fmt: skip
        await tts.aclose()


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["default", "mp3", "pcm", "abort"]).parse_args(argv)
    result = Result(args.out)
    return run(result, lambda: stream_case(args.url, args.case, result))


if __name__ == "__main__":
    sys.exit(main())
