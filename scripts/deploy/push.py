#!/usr/bin/env python3
"""Push a truss to Baseten as a published deployment named after the git commit, and record it.

    python scripts/deploy/push.py TRUSS_DIR [--config config_http.yaml] [--record FILE] [--json]

Runs ``truss push TRUSS_DIR --output json --non-interactive --deployment-name <sha[-dirty-…]>``
WITHOUT ``--wait`` (truss's wait gives up at the first UNHEALTHY poll; deploy.py waits out the
model's start-up itself), authenticated through truss's env remote (``BASETEN_TRUSS_AUTH_*`` from
``BASETEN_REMOTE_URL`` and ``BASETEN_API_KEY``). Writes the deployment record (ids, URLs) to
``deployment-<truss>[-<config>].json``. The API key is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from scripts.deploy.baseten_api import (
    ConfigError,
    api_key_from_env,
    deployment_ws_url,
    environment_ws_url,
    redact,
    websocket_base,
)

TEAM_ENV = "BASETEN_TEAM"  # accounts with several teams must name one
DEFAULT_CONFIG = "config.yaml"
UPLOAD_TIMEOUT_S = 30 * 60  # truss push without --wait: upload and hand-over only


class PushError(RuntimeError):
    """truss push failed; the message says why."""


@dataclass
class DeploymentRecord:
    truss_dir: str
    model_name: str | None
    model_id: str
    deployment_id: str
    deployment_name: str
    predict_url: str
    logs_url: str | None
    deployment_ws_url: str
    production_ws_url: str
    config: str = DEFAULT_CONFIG
    pushed_at: str = ""

    @property
    def production_predict_url(self) -> str:
        host = self.predict_url.split("/deployment/", 1)[0]
        return f"{host}/environments/production/predict"

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> DeploymentRecord:
        return cls(**json.loads(path.read_text()))


def truss_config(truss_dir: Path, config: str = DEFAULT_CONFIG) -> dict[str, Any]:
    path = truss_dir / config
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{truss_dir} is not a truss: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping")
    return data


def _git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def deployment_name(truss_dir: Path, config: dict[str, Any], now: datetime | None = None) -> str:
    """HEAD's short sha, plus ``-dirty-<UTC time>`` when what a push uploads (the truss and its
    external package dirs) differs from HEAD. CI reads the sha back from production's name."""
    sha = _git(["rev-parse", "--short=10", "HEAD"], truss_dir).strip()
    paths = [truss_dir.resolve()]
    paths += [(truss_dir / p).resolve() for p in config.get("external_package_dirs") or []]
    if not _git(["status", "--porcelain", "--", *map(str, paths)], truss_dir).strip():
        return sha
    return f"{sha}-dirty-{(now or datetime.now(UTC)).strftime('%Y%m%d%H%M%S')}"


def find_truss_bin(explicit: str | None = None) -> str:
    """``--truss-bin``, ``$TRUSS_BIN``, the venv's truss next to this Python, or PATH's."""
    beside = Path(sys.executable).parent / "truss"
    found = explicit or os.environ.get("TRUSS_BIN") or (beside.exists() and str(beside))
    found = found or shutil.which("truss")
    if not found:
        raise ConfigError("no truss executable: run `make venv` or set TRUSS_BIN")
    return found


def push_command(truss_bin: str, truss_dir: Path, name: str, config: str, team: str | None):
    cmd = [truss_bin, "push", str(truss_dir), "--output", "json", "--non-interactive"]
    cmd += ["--deployment-name", name]
    if config != DEFAULT_CONFIG:
        cmd += ["--config", str((truss_dir / config).resolve())]  # absolute: no base to guess
    return cmd + (["--team", team] if team else [])


def parse_push_output(stdout: str) -> dict[str, Any]:
    """The last JSON object truss printed on stdout (pretty-printed over several lines)."""
    decoder, found, index = json.JSONDecoder(), None, stdout.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(stdout, index)
        except ValueError:
            index = stdout.find("{", index + 1)
            continue
        found = value if isinstance(value, dict) else found
        index = stdout.find("{", end)
    if found is None:
        raise PushError("truss push printed no JSON result on stdout; see its output above")
    return found


def push(
    truss_dir: Path,
    *,
    api_key: str,
    config: str = DEFAULT_CONFIG,
    name: str | None = None,
    truss_bin: str | None = None,
    team: str | None = None,
    timeout_s: float = UPLOAD_TIMEOUT_S,
) -> DeploymentRecord:
    """Upload and start the build; return the record (the build goes on at Baseten)."""
    cfg = truss_config(truss_dir, config)
    name = name or deployment_name(truss_dir, cfg)
    team = team or os.environ.get(TEAM_ENV) or None
    cmd = push_command(find_truss_bin(truss_bin), truss_dir, name, config, team)
    env = dict(os.environ, PYTHONUNBUFFERED="1", BASETEN_TRUSS_AUTH_API_KEY=api_key)
    remote = env.get("BASETEN_REMOTE_URL") or "https://app.baseten.co"
    env["BASETEN_TRUSS_AUTH_REMOTE_URL"] = remote.rstrip("/")
    print(f"push: truss push {truss_dir} ({config}) as deployment {name}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise PushError(f"truss push did not return within {timeout_s:.0f} s") from None
    sys.stderr.write(redact(proc.stderr, api_key))
    result = parse_push_output(redact(proc.stdout, api_key))
    if "error" in result or proc.returncode != 0:
        error = result.get("error") or {}
        message = error.get("message") if isinstance(error, dict) else error
        raise PushError(f"truss push failed (exit {proc.returncode}): {message or result}")
    if result.get("is_draft"):
        raise PushError("truss made a development deployment; a published one was expected")
    try:
        model_id, dep_id = str(result["model_id"]), str(result["model_version_id"])
        base = websocket_base(str(result["predict_url"]))
    except (KeyError, ValueError) as exc:
        raise PushError(f"truss push result lacks {exc}: {result}") from None
    return DeploymentRecord(
        truss_dir=truss_dir.resolve().name,
        model_name=cfg.get("model_name"),
        model_id=model_id,
        deployment_id=dep_id,
        deployment_name=name,
        predict_url=str(result["predict_url"]),
        logs_url=result.get("logs_url"),
        deployment_ws_url=deployment_ws_url(base, dep_id),
        production_ws_url=environment_ws_url(base),
        config=config,
        pushed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def default_record_path(truss_dir: Path, config: str = DEFAULT_CONFIG) -> Path:
    flavour = "" if config == DEFAULT_CONFIG else "-" + Path(config).stem
    return Path.cwd() / f"deployment-{truss_dir.resolve().name}{flavour}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file inside the truss")
    parser.add_argument("--record", type=Path, help="default: deployment-<truss>.json")
    parser.add_argument("--deployment-name", help="default: short git sha (+ -dirty-<time>)")
    parser.add_argument("--truss-bin", help="truss executable (default: the venv's)")
    parser.add_argument("--team", help=f"Baseten team (default: ${TEAM_ENV})")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args(argv)
    try:
        record = push(
            args.truss_dir,
            api_key=api_key_from_env(),
            config=args.config,
            name=args.deployment_name,
            truss_bin=args.truss_bin,
            team=args.team,
        )
    except ConfigError as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 2
    except (PushError, OSError) as exc:
        print(f"FAIL push {args.truss_dir}: {exc}", file=sys.stderr)
        return 1
    path = args.record or default_record_path(args.truss_dir, args.config)
    record.write(path)
    print(json.dumps(asdict(record)) if args.json else f"OK {record.deployment_id}; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
