"""Together's Python SDK (together), unchanged, against the local server's HTTP flavour:
``audio.speech.create`` to a file, and streamed (server-sent events). ``base_url`` ends in
``?_p=``: the SDK's own path (``/v1/audio/speech``) lands in a query parameter the server ignores."""

from __future__ import annotations

import base64
import sys

from _result import API_KEY, Result, parser, run
from together import Together

TEXT = "Hi there. How are you? I am fine."


def to_file(url: str, result: Result) -> None:
    api_key = API_KEY
    path = result.out / "reply.mp3"
    # --- docs:together-file ---
    client = Together(api_key=api_key, base_url=url)
    response = client.audio.speech.create(
        model="canopylabs/orpheus-3b-0.1-ft", input=TEXT, voice="tara", response_format="mp3"
    )
    response.write_to_file(path)
    # --- end ---
    result.audio(path.name, path.read_bytes(), "mp3", asked={"format": "mp3"})


def streamed(url: str, result: Result) -> None:
    api_key = API_KEY
    # --- docs:together-stream ---
    client = Together(api_key=api_key, base_url=url)
    stream = client.audio.speech.create(
        model="canopylabs/orpheus-3b-0.1-ft",
        input=TEXT,
        voice="tara",
        stream=True,
        response_format="raw",
        response_encoding="pcm_s16le",
    )
    pcm = b"".join(
        base64.b64decode(chunk.delta) for chunk in stream if chunk.type.endswith("delta")
    )
    # --- end ---
    result.audio("reply.pcm", pcm, "s16le", sample_rate=24000, asked={"format": "pcm_s16le"})


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["file", "stream"]).parse_args(argv)
    result = Result(args.out)
    return run(result, lambda: {"file": to_file, "stream": streamed}[args.case](args.url, result))


if __name__ == "__main__":
    sys.exit(main())
