#!/usr/bin/env python3
"""Push a truss to Baseten as a published deployment named after the git commit, and record it.

    python scripts/deploy/push.py TRUSS_DIR [--config config_http.yaml] [--json]

Runs ``truss push TRUSS_DIR --output json --non-interactive --deployment-name <sha[-dirty-…]>``
(the CLI: truss's Python API pushes config.yaml only) WITHOUT ``--wait``: truss's wait gives up
at the first UNHEALTHY poll, deploy.py waits out the model's start-up itself. Authenticated
through truss's env remote (``BASETEN_TRUSS_AUTH_*`` from ``BASETEN_REMOTE_URL`` and
``BASETEN_API_KEY``); ``BASETEN_TEAM`` names the team when the account has several, ``TRUSS_BIN``
another truss executable. Writes the deployment record to ``deployment-<truss>[-<config>].json``.
The API key is never printed or logged.
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

from scripts.deploy.baseten_api import ConfigError, DeployError, api_key_from_env, redact

DEFAULT_CONFIG = "config.yaml"
UPLOAD_TIMEOUT_S = 30 * 60  # truss push without --wait: upload and hand-over only


@dataclass
class DeploymentRecord:
    model_name: str | None
    model_id: str
    deployment_id: str
    deployment_name: str
    predict_url: str  # https://model-<model_id>.api.baseten.co/deployment/<deployment_id>/predict
    logs_url: str | None = None

    def url(self, protocol: str, production: bool = False) -> str:
        """The deployment's own URL (it serves there before any promotion) or production's:
        ``…/predict`` for HTTP, ``wss://…/websocket`` otherwise."""
        host = self.predict_url.split("/deployment/", 1)[0]
        where = "environments/production" if production else f"deployment/{self.deployment_id}"
        if protocol == "http":
            return f"{host}/{where}/predict"
        return f"{host.replace('http', 'ws', 1)}/{where}/websocket"

    @classmethod
    def read(cls, path: Path) -> DeploymentRecord:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read the deployment record {path}: {exc}") from None


def truss_config(truss_dir: Path, config: str = DEFAULT_CONFIG) -> dict[str, Any]:
    path = truss_dir / config
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{truss_dir} is not a truss: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping")
    return data


def record_path(truss_dir: Path, config: str = DEFAULT_CONFIG, kind: str = "deployment") -> Path:
    """``<kind>-<truss>[-<config>].json`` here: the deployment record, or deploy.py's report."""
    flavour = "" if config == DEFAULT_CONFIG else "-" + Path(config).stem
    return Path.cwd() / f"{kind}-{truss_dir.resolve().name}{flavour}.json"


def git(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def pushed_paths(truss_dir: Path, config: dict[str, Any]) -> list[str]:
    """What a push uploads: the truss and its external package dirs."""
    dirs = [truss_dir, *(truss_dir / p for p in config.get("external_package_dirs") or [])]
    return [str(d.resolve()) for d in dirs]


def deployment_name(truss_dir: Path, config: dict[str, Any], now: datetime | None = None) -> str:
    """HEAD's short sha, plus ``-dirty-<UTC time>`` when what a push uploads differs from HEAD.
    changed.py reads the sha back from production's deployment name."""
    sha = git(["rev-parse", "--short=10", "HEAD"], truss_dir).strip()
    changes = git(["status", "--porcelain", "--", *pushed_paths(truss_dir, config)], truss_dir)
    if not changes.strip():
        return sha
    return f"{sha}-dirty-{(now or datetime.now(UTC)).strftime('%Y%m%d%H%M%S')}"


def push_command(truss: str, truss_dir: Path, name: str, config: str, team: str | None):
    cmd = [truss, "push", str(truss_dir), "--output", "json", "--non-interactive"]
    cmd += ["--deployment-name", name]
    if config != DEFAULT_CONFIG:
        cmd += ["--config", str((truss_dir / config).resolve())]  # absolute: no base to guess
    return cmd + (["--team", team] if team else [])


def push(truss_dir: Path, api_key: str, config: str = DEFAULT_CONFIG) -> DeploymentRecord:
    """Upload and start the build (it goes on at Baseten); write the record (record_path)."""
    cfg = truss_config(truss_dir, config)
    name = deployment_name(truss_dir, cfg)
    beside_python = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    truss = os.environ.get("TRUSS_BIN") or shutil.which("truss", path=beside_python)
    if not truss:
        raise ConfigError("no truss executable: run `make venv` or set TRUSS_BIN")
    cmd = push_command(truss, truss_dir, name, config, os.environ.get("BASETEN_TEAM"))
    remote = (os.environ.get("BASETEN_REMOTE_URL") or "https://app.baseten.co").rstrip("/")
    env = dict(os.environ, PYTHONUNBUFFERED="1", BASETEN_TRUSS_AUTH_API_KEY=api_key)
    env["BASETEN_TRUSS_AUTH_REMOTE_URL"] = remote
    print(f"push: truss push {truss_dir} ({config}) as deployment {name}", file=sys.stderr)
    fix = "fix the push (truss's output above), re-run"
    try:
        proc = subprocess.run(
            cmd, env=env, text=True, capture_output=True, timeout=UPLOAD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise DeployError(f"truss push did not return within {UPLOAD_TIMEOUT_S} s", fix) from None
    sys.stderr.write(redact(proc.stderr, api_key))
    # The answer is the last JSON object, from a line's start (truss pretty-prints it; on failure
    # {"error": {...}}), whatever else reached stdout before it.
    stdout = redact(proc.stdout, api_key)
    start = ("\n" + stdout).rfind("\n{")
    try:
        result = json.loads(stdout[start:]) if start >= 0 else {}
    except ValueError:
        result = {}
    if proc.returncode or not {"model_id", "model_version_id", "predict_url"} <= set(result):
        error = result.get("error") or "no JSON result on stdout; see its output above"
        reason = error.get("message", error) if isinstance(error, dict) else error
        raise DeployError(f"truss push failed (exit {proc.returncode}): {reason}", fix)
    ids = str(result["model_id"]), str(result["model_version_id"])
    urls = str(result["predict_url"]), result.get("logs_url")
    record = DeploymentRecord(cfg.get("model_name"), *ids, name, *urls)
    path = record_path(truss_dir, config)
    path.write_text(json.dumps(asdict(record), indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config file inside the truss")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    args = parser.parse_args(argv)
    try:
        record = push(args.truss_dir, api_key_from_env(), args.config)
    except ConfigError as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 2
    except (DeployError, OSError) as exc:
        print(f"FAIL push {args.truss_dir}: {exc}", file=sys.stderr)
        return 1
    path = record_path(args.truss_dir, args.config)
    print(json.dumps(asdict(record)) if args.json else f"OK {record.deployment_id}; record {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
