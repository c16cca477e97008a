#!/usr/bin/env python3
"""Push a truss to Baseten as a published deployment named after the git commit, and record it.

    python scripts/deploy/push.py TRUSS_DIR [--record FILE] [--deployment-name NAME] [--json]

Runs ``truss push TRUSS_DIR --output json --non-interactive --deployment-name <sha[-dirty-…]>
--wait``, authenticated through truss's environment remote (``BASETEN_TRUSS_AUTH_REMOTE_URL`` =
``BASETEN_REMOTE_URL`` or https://app.baseten.co, ``BASETEN_TRUSS_AUTH_API_KEY`` = ``BASETEN_API_KEY``).
Writes a deployment record (model id, deployment id, WebSocket URLs of the deployment and of
production) to ``deployment-<truss>.json``. The API key is never printed or logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import yaml

from scripts.deploy.baseten_api import (
    ConfigError,
    api_key_from_env,
    deployment_ws_url,
    environment_ws_url,
    redact,
    websocket_base,
)

logger = logging.getLogger("push")

REMOTE_URL_ENV = "BASETEN_REMOTE_URL"
DEFAULT_REMOTE_URL = "https://app.baseten.co"
TRUSS_BIN_ENV = "TRUSS_BIN"
# Accounts with several teams must name one: non-interactive truss cannot ask.
TEAM_ENV = "BASETEN_TEAM"
# truss >= 0.18.26 builds a remote from these two variables, bypassing ~/.trussrc and the keyring.
TRUSS_AUTH_REMOTE_URL_ENV = "BASETEN_TRUSS_AUTH_REMOTE_URL"
TRUSS_AUTH_API_KEY_ENV = "BASETEN_TRUSS_AUTH_API_KEY"
DEFAULT_WAIT_TIMEOUT_S = 60 * 60  # a cold GPU image build plus weight download can take long
SHORT_SHA_LEN = 10


class PushError(RuntimeError):
    """truss push failed; the message says why and what to look at."""


@dataclass
class DeploymentRecord:
    truss_dir: str
    model_name: str | None
    model_id: str
    deployment_id: str
    deployment_name: str
    git_sha: str | None
    dirty: bool
    status: str | None
    is_production: bool | None
    predict_url: str
    logs_url: str | None
    deployment_ws_url: str
    production_ws_url: str
    pushed_at: str

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> DeploymentRecord:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class GitState:
    sha: str
    dirty: bool


def _git(args: Sequence[str], cwd: Path) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def truss_config(truss_dir: Path) -> dict[str, Any]:
    path = truss_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{truss_dir} is not a truss: cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping")
    return data


def pushed_paths(truss_dir: Path, config: Mapping[str, Any]) -> list[Path]:
    """What a push uploads: the truss and its external package dirs."""
    extra = config.get("external_package_dirs") or []
    return [truss_dir, *((truss_dir / p).resolve() for p in extra)]


def git_state(truss_dir: Path, config: Mapping[str, Any]) -> GitState:
    """HEAD's short sha, and whether anything that would be pushed differs from it."""
    sha = _git(["rev-parse", f"--short={SHORT_SHA_LEN}", "HEAD"], truss_dir).strip()
    paths = [str(p) for p in pushed_paths(truss_dir.resolve(), config)]
    changes = _git(["status", "--porcelain", "--", *paths], truss_dir)
    return GitState(sha=sha, dirty=bool(changes.strip()))


def deployment_name(state: GitState, now: datetime | None = None) -> str:
    """``<sha>``, or ``<sha>-dirty-<UTC time>`` for uncommitted changes (not reproducible from sha)."""
    if not state.dirty:
        return state.sha
    now = now or datetime.now(UTC)
    return f"{state.sha}-dirty-{now.strftime('%Y%m%d%H%M%S')}"


def find_truss_bin(explicit: str | None = None) -> str:
    """``--truss-bin``, ``$TRUSS_BIN``, the venv's truss next to this Python, or PATH's."""
    candidates = [explicit, os.environ.get(TRUSS_BIN_ENV)]
    for candidate in candidates:
        if candidate:
            return candidate
    beside = Path(sys.executable).parent / "truss"
    if beside.exists():
        return str(beside)
    found = shutil.which("truss")
    if not found:
        raise ConfigError("no truss executable: run `make venv` or set TRUSS_BIN")
    return found


def push_command(
    truss_bin: str,
    truss_dir: Path,
    name: str,
    timeout_s: int,
    config_file: str | None = None,
    team: str | None = None,
) -> list[str]:
    """The truss CLI call (flags as in truss 0.18.35's `truss push --help`)."""
    cmd = [
        truss_bin,
        "push",
        str(truss_dir),
        "--output",
        "json",
        "--non-interactive",
        "--deployment-name",
        name,
        "--wait",
        "--timeout-seconds",
        str(timeout_s),
    ]
    if config_file:
        cmd += ["--config", config_file]
    if team:
        cmd += ["--team", team]
    return cmd


def truss_env(api_key: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours plus truss's env-remote variables."""
    env = dict(os.environ if base is None else base)
    env[TRUSS_AUTH_REMOTE_URL_ENV] = (env.get(REMOTE_URL_ENV) or DEFAULT_REMOTE_URL).rstrip("/")
    env[TRUSS_AUTH_API_KEY_ENV] = api_key
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def parse_push_output(stdout: str) -> dict[str, Any]:
    """The last JSON object truss printed on stdout (it pretty-prints it over several lines)."""
    decoder = json.JSONDecoder()
    found: dict[str, Any] | None = None
    index = stdout.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(stdout, index)
        except ValueError:
            index = stdout.find("{", index + 1)
            continue
        if isinstance(value, dict):
            found = value
        index = stdout.find("{", end)
    if found is None:
        raise PushError("truss push printed no JSON result on stdout")
    return found


def _forward(stream: IO[str], sink: IO[str], secret: str) -> None:
    for line in stream:
        sink.write(redact(line, secret))
        sink.flush()


def run_truss(cmd: Sequence[str], env: Mapping[str, str], secret: str) -> tuple[int, str]:
    """Run truss, streaming its progress (stderr) through, returning (exit code, stdout)."""
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env), text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    forwarder = threading.Thread(
        target=_forward, args=(proc.stderr, sys.stderr, secret), daemon=True
    )
    forwarder.start()
    stdout = proc.stdout.read()
    code = proc.wait()
    forwarder.join(timeout=5)
    return code, redact(stdout, secret)


def _error_message(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    message = str(error.get("message") or "unknown error")
    deployment = error.get("deployment")
    if isinstance(deployment, dict) and deployment.get("status"):
        message += f" (deployment {deployment.get('id')} is {deployment['status']})"
    if error.get("status_code"):
        message += f" (HTTP {error['status_code']})"
    return message


def build_record(
    result: Mapping[str, Any],
    truss_dir: Path,
    config: Mapping[str, Any],
    name: str,
    git: GitState | None,
) -> DeploymentRecord:
    try:
        model_id = str(result["model_id"])
        deployment_id = str(result["model_version_id"])
        predict_url = str(result["predict_url"])
    except KeyError as exc:
        raise PushError(f"truss push result lacks {exc.args[0]}: {dict(result)}") from None
    if result.get("is_draft"):
        raise PushError("truss made a development deployment; a published one was expected")
    deployment = result.get("deployment") or {}
    base = websocket_base(predict_url)
    return DeploymentRecord(
        truss_dir=truss_dir.name,
        model_name=config.get("model_name"),
        model_id=model_id,
        deployment_id=deployment_id,
        deployment_name=name,
        git_sha=git.sha if git else None,
        dirty=git.dirty if git else False,
        status=deployment.get("status"),
        is_production=deployment.get("is_production"),
        predict_url=predict_url,
        logs_url=result.get("logs_url"),
        deployment_ws_url=deployment_ws_url(base, deployment_id),
        production_ws_url=environment_ws_url(base),
        pushed_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def default_record_path(truss_dir: Path) -> Path:
    return Path.cwd() / f"deployment-{truss_dir.resolve().name}.json"


def push(
    truss_dir: Path,
    *,
    api_key: str,
    name: str | None = None,
    truss_bin: str | None = None,
    timeout_s: int = DEFAULT_WAIT_TIMEOUT_S,
    config_file: str | None = None,
    team: str | None = None,
    env: Mapping[str, str] | None = None,
) -> DeploymentRecord:
    """Push and wait for the build; return the deployment record (not yet written)."""
    config = truss_config(truss_dir)
    git: GitState | None = None
    if name is None:
        git = git_state(truss_dir, config)
        name = deployment_name(git)
    else:
        try:
            git = git_state(truss_dir, config)
        except ConfigError:
            git = None  # an explicit name does not need a git checkout
    team = team or (os.environ if env is None else env).get(TEAM_ENV) or None
    cmd = push_command(find_truss_bin(truss_bin), truss_dir, name, timeout_s, config_file, team)
    logger.info("truss push %s as deployment %s", truss_dir, name)
    code, stdout = run_truss(cmd, truss_env(api_key, env), api_key)
    try:
        result = parse_push_output(stdout)
    except PushError:
        raise PushError(
            f"truss push exited {code} without a JSON result; see its output above"
        ) from None
    if "error" in result:
        raise PushError(f"truss push failed: {_error_message(result['error'])}")
    if code != 0:
        raise PushError(f"truss push exited {code}")
    return build_record(result, truss_dir, config, name, git)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument(
        "--record", type=Path, help="deployment record path (deployment-<truss>.json)"
    )
    parser.add_argument("--deployment-name", help="default: short git sha (+ -dirty-<time>)")
    parser.add_argument("--config", help="another config file inside the truss (truss --config)")
    parser.add_argument("--truss-bin", help="truss executable (default: the venv's)")
    parser.add_argument("--team", help=f"Baseten team (default: ${TEAM_ENV})")
    parser.add_argument("--timeout", type=int, default=DEFAULT_WAIT_TIMEOUT_S, help="build wait, s")
    parser.add_argument("--json", action="store_true", help="print the record as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        key = api_key_from_env()
        record = push(
            args.truss_dir,
            api_key=key,
            name=args.deployment_name,
            truss_bin=args.truss_bin,
            timeout_s=args.timeout,
            config_file=args.config,
            team=args.team,
        )
    except ConfigError as exc:
        print(f"push: {exc}", file=sys.stderr)
        return 2
    except (PushError, OSError) as exc:
        print(f"FAIL push {args.truss_dir}: {exc}", file=sys.stderr)
        return 1
    path = args.record or default_record_path(args.truss_dir)
    record.write(path)
    if args.json:
        print(json.dumps(asdict(record)))
    else:
        print(
            f"OK pushed {record.model_name or record.truss_dir} as deployment "
            f"{record.deployment_id} ({record.deployment_name}, {record.status}); record: {path}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
