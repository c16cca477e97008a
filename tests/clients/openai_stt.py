"""OpenAI's Python SDK (openai), unchanged, against the whisper truss's HTTP flavour
(``config_http.yaml``): ``audio.transcriptions.create`` in every response format, streamed, on a
set of clips (their texts for the WER), and on a file that is no audio (the SDK's error).
``base_url`` ends in ``?_p=``: the SDK's own path (``/audio/transcriptions``) lands in a query
parameter the server ignores."""

from __future__ import annotations

import sys
from pathlib import Path

from _result import API_KEY, Result, parser, run
from openai import BadRequestError, OpenAI

CORPUS = ["LJ001-0001", "LJ001-0007", "LJ001-0010",
          "jfk-inaugural", "librispeech-quilter", "three-speakers"]  # fmt: skip


def formats(url: str, result: Result, path: Path) -> None:
    api_key = API_KEY
    # --- docs:openai-stt ---
    client = OpenAI(api_key=api_key, base_url=url)
    with open(path, "rb") as audio:
        transcript = client.audio.transcriptions.create(model="whisper-1", file=audio)
    print(transcript.text)
    # --- end ---
    result.data["json"] = transcript.model_dump()
    # --- docs:openai-stt-verbose ---
    with open(path, "rb") as audio:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    for word in verbose.words:
        print(f"{word.start:7.2f} {word.end:7.2f} {word.word}")
    # --- end ---
    result.data["verbose_json"] = verbose.model_dump()
    for fmt in ("srt", "vtt", "text"):  # each a str
        with open(path, "rb") as audio:
            result.data[fmt] = client.audio.transcriptions.create(
                model="whisper-1", file=audio, response_format=fmt
            )
    try:
        client.audio.transcriptions.create(model="whisper-1", file=("notes.wav", b"not audio"))
    except BadRequestError as exc:
        result.data["bad_file"] = {"status": exc.status_code, "body": exc.body}


def streamed(url: str, result: Result, path: Path) -> None:
    api_key = API_KEY
    # --- docs:openai-stt-stream ---
    client = OpenAI(api_key=api_key, base_url=url)
    events = []
    with open(path, "rb") as audio:
        stream = client.audio.transcriptions.create(model="whisper-1", file=audio, stream=True)
        for event in stream:  # a transcript.text.delta per chunk of the file, then .done
            events.append(event)
            if event.type == "transcript.text.delta":
                print(event.delta, end="", flush=True)
    # --- end ---
    for event in events:
        result.event(**event.model_dump())


def corpus(url: str, result: Result, folder: Path) -> None:
    client = OpenAI(api_key=API_KEY, base_url=url)
    texts = {}
    for name in CORPUS:
        with open(folder / f"{name}.wav", "rb") as audio:
            texts[name] = client.audio.transcriptions.create(model="whisper-1", file=audio).text
    result.data["texts"] = texts


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ["formats", "stream", "corpus"]).parse_args(argv)
    result = Result(args.out)
    case = {"formats": formats, "stream": streamed, "corpus": corpus}[args.case]
    return run(result, lambda: case(args.url, result, args.sample))


if __name__ == "__main__":
    sys.exit(main())
