#!/usr/bin/env python
"""`make demo`: streaming transcription on this machine, end to end.

Starts the whisper truss on the real Truss server (127.0.0.1, tiny.en on CPU without a GPU),
streams a bundled speech sample at real-time pace as the published client does, prints partial
and final transcripts as they arrive, then stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from scripts import REPO_ROOT
from scripts.clients.stt import FRAME_SAMPLES, _print, frames_of, read_wav, stream, v1_metadata
from scripts.local.spawn import serve_truss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("wav", nargs="?", default=str(REPO_ROOT / "samples" / "speech_en.wav"))
    args = parser.parse_args()
    print(
        "starting the whisper truss on the Truss server (first start builds the context)...",
        flush=True,
    )
    with serve_truss("whisper_streaming_truss") as server:
        print(f"serving {server.ws_url}; streaming {args.wav} at real-time pace\n", flush=True)
        samples = read_wav(args.wav)
        result = asyncio.run(
            stream(
                server.ws_url,
                frames_of(samples),
                v1_metadata(),
                frame_s=FRAME_SAMPLES / 16000,
                on_message=_print,
            )
        )
    print(f"\ntranscript: {result.transcript}")
    if result.first_partial_s is not None:
        print(f"first partial after {result.first_partial_s:.2f} s; {len(result.finals)} finals")
    sys.exit(0 if result.finished and not result.errors else 1)


if __name__ == "__main__":
    main()
