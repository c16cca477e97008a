"""Fish Audio's Python SDK (fish-audio-sdk), unchanged, against the local server: live TTS over
the WebSocket (sync and async clients) and HTTP ``/v1/tts`` (``convert``, and the legacy
``Session.tts``) against the HTTP flavour. ``base_url`` ends in ``?_p=``: the SDK's own path
(``/v1/tts/live``, ``/v1/tts``) lands in a query parameter the server ignores."""

from __future__ import annotations

import sys

from _result import API_KEY, Result, parser, run
from fish_audio_sdk import Session, TTSRequest
from fishaudio import AsyncFishAudio, FishAudio, TTSConfig

SENTENCES = ["Hi there. ", "How are you? ", "I am fine."]


def ws_sync(url: str, result: Result) -> None:
    api_key = API_KEY
    # --- docs:fish-ws ---
    client = FishAudio(api_key=api_key, base_url=url)
    audio = b"".join(client.tts.stream_websocket(iter(SENTENCES), reference_id="tara"))
    # --- end ---
    result.audio("reply.mp3", audio, "mp3", asked={"format": "mp3"})  # the SDK's default format


async def ws_async(url: str, result: Result) -> None:
    async def sentences():
        for sentence in SENTENCES:
            yield sentence

    api_key = API_KEY
    # --- docs:fish-ws-async ---
    client = AsyncFishAudio(api_key=api_key, base_url=url)
    stream = client.tts.stream_websocket(
        sentences(), format="pcm", config=TTSConfig(sample_rate=16000)
    )
    audio = b"".join([chunk async for chunk in stream])
    # --- end ---
    result.audio("reply.pcm", audio, "s16le", sample_rate=16000, asked={"format": "pcm"})


def http_convert(url: str, result: Result) -> None:
    api_key = API_KEY
    text = "".join(SENTENCES)
    # --- docs:fish-http ---
    client = FishAudio(api_key=api_key, base_url=url)
    audio = client.tts.convert(text=text, reference_id="tara", format="wav")
    # --- end ---
    result.audio("reply.wav", audio, "wav", asked={"format": "wav"})


def http_legacy(url: str, result: Result) -> None:
    api_key = API_KEY
    text = "".join(SENTENCES)
    # --- docs:fish-http-legacy ---
    session = Session(api_key, base_url=url)
    audio = b"".join(session.tts(TTSRequest(text=text, reference_id="tara")))
    # --- end ---
    result.audio("reply.mp3", audio, "mp3", asked={"format": "mp3"})


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["ws-sync", "ws-async", "http-convert", "http-legacy"]).parse_args(argv)
    result = Result(args.out)
    cases = {"ws-sync": ws_sync, "ws-async": ws_async, "http-convert": http_convert,
             "http-legacy": http_legacy}  # fmt: skip
    return run(result, lambda: cases[args.case](args.url, result))


if __name__ == "__main__":
    sys.exit(main())
