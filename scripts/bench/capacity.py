#!/usr/bin/env python
"""Find a truss's knee on the hardware it runs on: the most concurrent real-time sessions whose
figures stay within the truss's SLO budgets (``<truss>/slo.yaml``, the same budgets and load as
the deploy gate, ``scripts/deploy/loadtest.py``; a section's ``cpu_budgets`` instead on the CPU
stand-in), then write it down.

    bench-capacity whisper_streaming_truss                 # local server, this machine
    bench-capacity orpheus_tts_truss --dummy-weights --write
    bench-capacity whisper_streaming_truss --url wss://…/deployment/<id>/websocket --write

Levels grow by half from ``--start`` until one breaks a budget, then bisect. The local server
runs with admission control off (the search finds the limit itself); against ``--url`` the
deployment's own admission caps what can be measured (a 1013 counts as an error).

``--write`` records the knee: on a local run without a GPU (the CPU stand-in) in
``scripts/local/cpu_standin.yaml``; otherwise (a GPU here, or ``--url`` a deployment on
production hardware) as ``admission_capacity_sessions`` in every config of the truss and as
``concurrency_target`` in ``<truss>/autoscaling.yaml``: Baseten counts each open WebSocket
against the concurrency target and starts a replica when the average per replica passes
target x ``target_utilization_percentage``, so a replica is asked to hold at most the knee and
new ones start before it is reached.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts import REPO_ROOT
from scripts.clients.auth import API_KEY_ENV
from scripts.deploy.loadtest import Measurement, load_slo, measure

PROTOCOL = {"whisper_streaming_truss": "stt", "orpheus_tts_truss": "tts"}
CPU_STANDIN_FILE = REPO_ROOT / "scripts" / "local" / "cpu_standin.yaml"
CAPACITY_KEY = "admission_capacity_sessions"
TARGET_KEY = "concurrency_target"
# Each STT session slot streams at least this many clips per level, so the level holds its
# concurrency for a while instead of one burst.
CLIPS_PER_SLOT = 2


def level_spec(protocol: str, spec: dict[str, Any], sessions: int) -> dict[str, Any]:
    """The SLO's load, at ``sessions`` at once."""
    level = {**spec, "sessions": sessions}
    if protocol == "stt":
        files = list(spec["files"])
        wanted = max(len(files), CLIPS_PER_SLOT * sessions)
        level["files"] = list(itertools.islice(itertools.cycle(files), wanted))
    return level


def find_knee(
    run: Callable[[int], Measurement], start: int = 1, limit: int = 256
) -> tuple[int, list[Measurement]]:
    """The most sessions within budget (0 if even ``start`` is not), and every level measured.
    Assumes more sessions never do better: grow by half until a level fails, then bisect."""
    good, bad = 0, None
    levels: list[Measurement] = []
    n = max(1, start)
    while n is not None:
        m = run(n)
        levels.append(m)
        if m.ok:
            good = n
        else:
            bad = n
        if bad is None:
            n = min(n + max(1, n // 2), limit) if n < limit else None
        else:
            mid = (good + bad) // 2
            n = mid if good < mid < bad else None
        if good == 0 and bad is not None:
            break  # the first level already fails: nothing below it to find
    return good, levels


def set_key(text: str, key: str, value: int, section: str | None = None) -> str:
    """``text`` (YAML) with ``key: <int>`` set to ``value`` in place, comments kept; within the
    top-level ``section`` when given. Exactly one such line must exist."""
    start, end = 0, len(text)
    if section is not None:
        head = re.search(rf"^{re.escape(section)}:\s*$", text, re.M)
        if head is None:
            raise ValueError(f"no section {section!r}")
        start = head.end()
        nxt = re.search(r"^\S", text[start:], re.M)
        end = start + nxt.start() if nxt else len(text)
    pattern = re.compile(rf"^(\s*{re.escape(key)}:\s*)\d+", re.M)
    body, count = pattern.subn(rf"\g<1>{value}", text[start:end])
    if count != 1:
        raise ValueError(f"expected one {key!r} line, found {count}")
    return text[:start] + body + text[end:]


def write_knee(truss_dir: Path, knee: int, *, production: bool) -> list[Path]:
    """Record the knee where this hardware's servers read it; the files written."""
    if not production:
        edits = [(CPU_STANDIN_FILE, CAPACITY_KEY, truss_dir.name)]
    else:
        configs = sorted(truss_dir.glob("config*.yaml"))
        edits = [(p, CAPACITY_KEY, None) for p in configs]
        edits.append((truss_dir / "autoscaling.yaml", TARGET_KEY, None))
    for path, key, section in edits:
        path.write_text(set_key(path.read_text(), key, knee, section))
    return [path for path, _, _ in edits]


def has_gpu() -> bool:
    from scripts.local.serve import has_gpu as probe

    return probe()


@contextmanager
def local_server(truss_dir: Path, dummy_weights: bool) -> Iterator[str]:
    from scripts.local.spawn import ADMISSION_OFF, TTS_ADMISSION_OFF, serve_truss

    env = TTS_ADMISSION_OFF if PROTOCOL[truss_dir.name] == "tts" else ADMISSION_OFF
    timeout_s = float(os.environ.get("SERVE_START_TIMEOUT_S", 300))
    with serve_truss(
        truss_dir.name, dummy_weights=dummy_weights, start_timeout_s=timeout_s, env=env
    ) as served:
        yield served.ws_url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("truss", choices=sorted(PROTOCOL))
    parser.add_argument("--url", help="a deployment's WebSocket URL (key: $" + API_KEY_ENV + ")")
    parser.add_argument(
        "--dummy-weights", action="store_true", help="local Orpheus: random weights"
    )
    parser.add_argument("--start", type=int, default=1, help="first level (sessions)")
    parser.add_argument("--limit", type=int, default=256, help="never try more sessions")
    parser.add_argument("--write", action="store_true", help="record the knee (see above)")
    parser.add_argument("--out", type=Path, help="JSON report (default bench_results/…)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    truss_dir = REPO_ROOT / args.truss
    protocol = PROTOCOL[args.truss]
    spec = load_slo(truss_dir)[protocol]
    key = os.environ.get(API_KEY_ENV)
    production = bool(args.url) or has_gpu()
    if not production and "cpu_budgets" in spec:
        spec = {**spec, "budgets": spec["cpu_budgets"]}
    if args.write and production and args.dummy_weights:
        print("--write on production hardware needs the real weights", file=sys.stderr)
        return 2

    def search(url: str) -> tuple[int, list[Measurement]]:
        def run(n: int) -> Measurement:
            m = measure(protocol, url, key, level_spec(protocol, spec, n))
            print(
                f"{n:4d} sessions: {'within' if m.ok else 'OVER'} budget  {m.verdict}", flush=True
            )
            return m

        return find_knee(run, args.start, args.limit)

    if args.url:
        knee, levels = search(args.url)
    else:
        with local_server(truss_dir, args.dummy_weights) as url:
            knee, levels = search(url)
    report = {
        "truss": args.truss,
        "protocol": protocol,
        "target": args.url or "local server (scripts/local/serve.py, admission off)",
        "hardware": "production (--url or a GPU)" if production else "CPU stand-in",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "budgets": spec["budgets"],
        "knee_sessions": knee,
        "levels": [m.as_dict() for m in levels],
    }
    out = args.out or REPO_ROOT / "bench_results" / f"capacity_{args.truss}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nknee: {knee} concurrent {protocol} sessions within {truss_dir.name}/slo.yaml")
    print(f"wrote {out}")
    if knee == 0:
        print("not even one session within budget: nothing written", file=sys.stderr)
        return 1
    if args.write:
        for path in write_knee(truss_dir, knee, production=production):
            print(
                f"wrote {CAPACITY_KEY if path.stem != 'autoscaling' else TARGET_KEY} "
                f"= {knee} to {path.relative_to(REPO_ROOT)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
