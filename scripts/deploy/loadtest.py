#!/usr/bin/env python3
"""Measure a speech endpoint against SLO budgets: N concurrent sessions at real-time pace.

    python scripts/deploy/loadtest.py TRUSS_DIR URL --protocol stt|tts|http [--json]

The truss's ``slo.yaml`` holds one section per protocol (``stt``, ``tts``, ``http``): ``sessions``
(at once), the workload, and ``budgets`` (``<metric>_max`` / ``<metric>_min``). STT streams real
speech (``files`` under samples/, reference text in ``<name>.json``) with scripts/bench/stt.py's
session (WER with scripts/bench/wer.py, end of speech -> final latency); TTS sends ``text`` word
by word every ``word_interval_s`` (scripts/clients/tts.py: first audio after the first sentence,
real-time factor = wall time / audio time); HTTP POSTs Together's body ``{"model", "input",
"voice"}`` and decodes the WAV. The smoke test (smoke_test.py) is the same with one session.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from orpheus_tts.settings import ORPHEUS_HF_REPO
from scripts import SAMPLES_DIR
from scripts.bench.stats import percentile
from scripts.clients.auth import API_KEY_ENV
from scripts.deploy.baseten_api import ConfigError, redact

PROTOCOLS = ("stt", "tts", "http")


@dataclass
class Measurement:
    protocol: str
    url: str
    sessions: int
    metrics: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # why sessions failed (first few)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def verdict(self) -> str:
        if self.violations:
            return "; ".join(self.violations + self.failures[:1])
        shown = ", ".join(f"{k} {_fmt(self.metrics.get(k[:-4]))}" for k in self.budgets)
        return f"{self.sessions} {self.protocol} sessions within budget ({shown})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "verdict": self.verdict}


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _stats(name: str, values: list[float]) -> dict[str, Any]:
    """p50/p95 (nearest rank, as the benchmarks) and the values themselves (for plots)."""
    return {
        f"{name}_p50": percentile(values, 50),
        f"{name}_p95": percentile(values, 95),
        f"{name}_values": [round(v, 4) for v in values],
    }


def violations(metrics: dict[str, Any], budgets: dict[str, float]) -> list[str]:
    out = []
    for key, limit in budgets.items():
        name, _, bound = key.rpartition("_")
        value = metrics.get(name)
        if bound not in ("max", "min"):
            out.append(f"budget {key}: name must end in _max or _min")
        elif value is None:
            out.append(f"{name} not measured (budget {bound} {limit})")
        elif (value > limit) if bound == "max" else (value < limit):
            out.append(f"{name} {_fmt(value)} {'>' if bound == 'max' else '<'} {bound} {limit}")
    return out


def load_slo(truss_dir: Path) -> dict[str, dict[str, Any]]:
    path = truss_dir / "slo.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    unknown = set(data or {}) - set(PROTOCOLS)
    if not isinstance(data, dict) or unknown:
        raise ConfigError(f"{path}: expected sections {PROTOCOLS}, got {sorted(data or {})}")
    return data


async def _stt(url: str, key: str | None, spec: dict[str, Any], m: Measurement) -> None:
    from scripts.bench import stt as bench
    from scripts.bench.wer import wer

    files = list(spec.get("files") or ["speech_en"])
    slots, rng = asyncio.Semaphore(m.sessions), random.Random(0)

    async def one(name: str) -> Any:
        async with slots:
            return await bench.one_session(url, name, key, rng.uniform(0, bench.START_JITTER_S))

    results = await asyncio.gather(*(one(f) for f in files), return_exceptions=True)
    stats = [r for r in results if isinstance(r, bench.SessionStats)]
    m.failures += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    m.failures += [f"{s.file}: unfinished or error frames" for s in stats if not s.finished]
    refs = [json.loads((SAMPLES_DIR / f"{s.file}.json").read_text())["text"] for s in stats]
    latencies = [x for s in stats for x in s.final_latencies_s]
    m.metrics.update(
        **_stats("final_latency_s", latencies),
        wer=round(wer(refs, [s.transcript for s in stats]), 4) if stats else None,
        errors=len(files) - len(stats) + sum(bool(s.errors or not s.finished) for s in stats),
        audio_files=len(files),
        transcripts={s.file: s.transcript for s in stats},
    )


async def _tts(url: str, key: str | None, spec: dict[str, Any], m: Measurement) -> None:
    from scripts.clients.tts import TTSResult, stream_tts

    text = str(spec.get("text") or DEFAULT_TEXT)
    options = {"config": dict(spec.get("config") or {}), "api_key": key, "timeout_s": 300}
    options["word_interval_s"] = float(spec.get("word_interval_s", 0.1))
    sessions = [stream_tts(url, text, **options) for _ in range(m.sessions)]
    results = await asyncio.gather(*sessions, return_exceptions=True)
    ok = []
    for r in results:
        if not isinstance(r, TTSResult):
            m.failures.append(f"{type(r).__name__}: {r}")
        elif r.timed_out or r.close_code != 1000 or (r.error or {}).get("type") == "error":
            m.failures.append(f"close {r.close_code} {r.close_reason} {r.error or ''}".strip())
        elif r.audio_s < float(spec.get("min_session_audio_s", 0.5)):
            m.failures.append(f"only {r.audio_s:.2f} s of audio")
        else:
            ok.append(r)
    m.metrics.update(
        **_stats("ttfa_s", [r.time_to_first_audio_s for r in ok]),
        **_stats("rtf", [r.real_time_factor for r in ok]),
        audio_s=min((r.audio_s for r in ok), default=None),
        errors=m.sessions - len(ok),
    )


async def _http(url: str, key: str | None, spec: dict[str, Any], m: Measurement) -> None:
    from scripts.clients.connect import http_client

    body = {"model": ORPHEUS_HF_REPO, "input": str(spec.get("text") or DEFAULT_TEXT)}
    body["voice"] = str(spec.get("voice") or "tara")
    timeout_s = float(spec.get("timeout_s", 300))  # each request, start to last byte

    async def one(http: httpx.AsyncClient) -> tuple[float, float]:
        started = time.monotonic()
        async with asyncio.timeout(timeout_s):
            response = await http.post(url, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.content[:200]!r}")
        wall = time.monotonic() - started
        with wave.open(io.BytesIO(response.content)) as w:  # decodable audio, not just bytes
            return wall, w.getnframes() / w.getframerate()

    async with http_client(url, key, timeout_s=timeout_s) as http:
        sessions = [one(http) for _ in range(m.sessions)]
        results = await asyncio.gather(*sessions, return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple)]
    m.failures += [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    m.metrics.update(
        **_stats("latency_s", [wall for wall, _ in ok]),
        **_stats("rtf", [wall / audio for wall, audio in ok if audio]),
        audio_s=min((audio for _, audio in ok), default=None),
        errors=m.sessions - len(ok),
    )


DEFAULT_TEXT = "Hello! This is a smoke test of streaming speech, one word at a time."
_RUNNERS = {"stt": _stt, "tts": _tts, "http": _http}


def measure(protocol: str, url: str, api_key: str | None, spec: dict[str, Any]) -> Measurement:
    """Run the sessions of ``spec`` and hold the metrics to its budgets (never raises)."""
    m = Measurement(protocol, url, int(spec.get("sessions", 1)), budgets=dict(spec["budgets"]))
    started = time.monotonic()
    try:
        asyncio.run(_RUNNERS[protocol](url, api_key, spec, m))
    except Exception as exc:  # noqa: BLE001 - every failure is a measured failure
        m.failures.append(redact(f"{type(exc).__name__}: {exc}", api_key))
    m.metrics["wall_s"] = round(time.monotonic() - started, 3)
    m.violations = violations(m.metrics, m.budgets)
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("url", help="ws(s):// WebSocket or http(s):// predict URL")
    parser.add_argument("--protocol", choices=PROTOCOLS, required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    spec = load_slo(args.truss_dir)[args.protocol]
    m = measure(args.protocol, args.url, os.environ.get(API_KEY_ENV), spec)
    print(json.dumps(m.as_dict()) if args.json else f"{'PASS' if m.ok else 'FAIL'} {m.verdict}")
    return 0 if m.ok else 1


if __name__ == "__main__":
    sys.exit(main())
