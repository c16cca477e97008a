"""What every client script hands back to tests/test_clients.py: ``result.json`` and audio files
in ``--out``. Standard library only (these scripts run in .venv-clients, not the project venv)."""

from __future__ import annotations

import argparse
import asyncio
import json
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

API_KEY = "local-test-key"  # the local server checks none; a Baseten deployment needs a real one


class Result:
    """Collects what the client produced; ``save()`` writes result.json."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {"ok": False, "error": None, "audio": [], "events": []}

    def audio(self, name: str, data: bytes, fmt: str, **info: Any) -> None:
        """One audio file: ``fmt`` is how the client delivered it (``s16le`` = raw PCM int16,
        or a container/codec name for PyAV); ``info`` holds rate, channels, labels."""
        (self.out / name).write_bytes(data)
        self.data["audio"].append({"file": name, "format": fmt, "bytes": len(data), **info})

    def event(self, **event: Any) -> None:
        self.data["events"].append(event)

    def save(self) -> None:
        (self.out / "result.json").write_text(json.dumps(self.data, indent=1, default=repr))


def parser(doc: str, cases: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("case", choices=cases)
    p.add_argument("--url", required=True, help="the server URL in the form this client takes")
    p.add_argument("--out", type=Path, required=True, help="folder for result.json and audio")
    p.add_argument("--sample", type=Path, help="a WAV file (STT cases)")
    return p


def run(result: Result, body: Callable[[], Awaitable[None]] | Callable[[], None]) -> int:
    """Run the case, record an exception as the error; exit 0 unless the script itself broke."""
    try:
        outcome = body()
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
        result.data["ok"] = result.data["error"] is None
    except BaseException as exc:  # noqa: BLE001 - everything a client raises is the finding
        result.data["error"] = f"{type(exc).__name__}: {exc}"
        result.data["traceback"] = traceback.format_exc()[-6000:]
    result.save()
    return 0
