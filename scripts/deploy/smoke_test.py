#!/usr/bin/env python3
"""Check that a speech endpoint transcribes (STT), speaks (TTS) or answers a POST with audio
(HTTP): one session of scripts/deploy/loadtest.py with the smoke budgets below; exit 0 or 1.

    python scripts/deploy/smoke_test.py stt ws://127.0.0.1:8080/v1/websocket
    python scripts/deploy/smoke_test.py tts wss://model-<id>.api.baseten.co/deployment/<d>/websocket
    python scripts/deploy/smoke_test.py http https://model-<id>.api.baseten.co/environments/production/predict

Remote URLs send ``Authorization: Api-Key $BASETEN_API_KEY``; local ones need no key. HTTP 503 at
a WebSocket handshake (loading, waking from zero) is retried with backoff.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from scripts.clients.auth import API_KEY_ENV, is_local
from scripts.deploy.loadtest import DEFAULT_TEXT, PROTOCOLS, Measurement, measure

DEFAULT_TTS_TEXT = DEFAULT_TEXT  # what the TTS smoke session says
# One session; the real-speech sample bundled with the repo (14.4 s, streamed at real time).
SMOKE: dict[str, dict[str, Any]] = {
    "stt": {"files": ["speech_en"], "budgets": {"wer_max": 0.3, "errors_max": 0}},
    "tts": {"budgets": {"audio_s_min": 1.0, "errors_max": 0}},
    "http": {"budgets": {"audio_s_min": 1.0, "errors_max": 0}},
}
WORST_CASE_S = 6 * 60  # connect budget + a 14 s sample at real time + generous timeouts


def run(protocol: str, url: str, api_key: str | None) -> Measurement:
    return measure(protocol, url, api_key, SMOKE[protocol])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=PROTOCOLS)
    parser.add_argument("url", help="ws(s):// WebSocket or http(s):// predict URL")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    key = (os.environ.get(API_KEY_ENV) or "").strip() or None
    if key is None and not is_local(args.url):
        print(f"smoke_test: {API_KEY_ENV} is required for {args.url}", file=sys.stderr)
        return 2
    result = run(args.protocol, args.url, key)
    verdict = f"{'PASS' if result.ok else 'FAIL'} {args.protocol} {args.url}: {result.verdict}"
    print(json.dumps(result.as_dict()) if args.json else verdict)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
