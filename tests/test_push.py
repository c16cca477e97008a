"""scripts/deploy/push.py with a stand-in `truss` executable that prints the documented JSON output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scripts.deploy import push as ps

ROOT = Path(__file__).resolve().parent.parent
FAKE_TRUSS = ROOT / "tests" / "fixtures" / "fake_truss_cli" / "truss"
KEY = "sk-test-5f1e2d3c4b5a"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout with a truss that bundles ../shared, like the real ones."""
    (tmp_path / "demo_truss" / "model").mkdir(parents=True)
    (tmp_path / "demo_truss" / "config.yaml").write_text(
        "model_name: demo-speech\nexternal_package_dirs:\n  - ../shared\n"
    )
    (tmp_path / "demo_truss" / "model" / "model.py").write_text("class Model: ...\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "lib_code.py").write_text("X = 1\n")
    (tmp_path / "docs.md").write_text("not pushed\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@e", "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    return tmp_path


def run_push(repo: Path, *args: str, key: str | None = KEY, **fake_env: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASETEN_", "FAKE_TRUSS"))}
    if key is not None:
        env["BASETEN_API_KEY"] = key
    env["FAKE_TRUSS_LOG"] = str(repo / "truss_calls.jsonl")
    env.update(fake_env)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy" / "push.py"),
            "demo_truss",
            "--truss-bin",
            str(FAKE_TRUSS),
            *args,
        ],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls_file = repo / "truss_calls.jsonl"
    calls = (
        [json.loads(line) for line in calls_file.read_text().splitlines()]
        if calls_file.exists()
        else []
    )
    return proc, calls


def test_push_records_the_deployment_and_names_it_after_the_commit(repo):
    proc, calls = run_push(repo, FAKE_TRUSS_MODEL_ID="mdl1", FAKE_TRUSS_DEPLOYMENT_ID="dep9")
    assert proc.returncode == 0, proc.stderr
    sha = git(repo, "rev-parse", f"--short={ps.SHORT_SHA_LEN}", "HEAD")
    (call,) = calls
    assert call["argv"] == [
        "push",
        "demo_truss",
        "--output",
        "json",
        "--non-interactive",
        "--deployment-name",
        sha,
        "--wait",
        "--timeout-seconds",
        str(ps.DEFAULT_WAIT_TIMEOUT_S),
    ]
    # auth through truss's env remote, key from BASETEN_API_KEY only
    assert call["api_key"] == KEY and call["remote_url"] == "https://app.baseten.co"
    record = json.loads((repo / "deployment-demo_truss.json").read_text())
    assert record["model_id"] == "mdl1" and record["deployment_id"] == "dep9"
    assert record["deployment_name"] == sha and record["git_sha"] == sha and not record["dirty"]
    assert record["status"] == "ACTIVE" and record["model_name"] == "demo-speech"
    assert (
        record["deployment_ws_url"] == "wss://model-mdl1.api.baseten.co/deployment/dep9/websocket"
    )
    assert record["production_ws_url"] == (
        "wss://model-mdl1.api.baseten.co/environments/production/websocket"
    )
    assert "OK pushed demo-speech as deployment dep9" in proc.stdout
    assert "Deployment succeeded." in proc.stderr  # truss's progress is passed through
    assert KEY not in proc.stdout + proc.stderr


def test_remote_url_override_and_json_output(repo):
    proc, calls = run_push(
        repo,
        "--json",
        "--record",
        "out/rec.json",
        "--deployment-name",
        "v1-manual",
        BASETEN_REMOTE_URL="https://app.example.test/",
        BASETEN_TEAM="voice-team",
        FAKE_TRUSS_HOST="http://127.0.0.1:9999",
    )
    assert proc.returncode == 0, proc.stderr
    assert calls[0]["remote_url"] == "https://app.example.test"
    argv = calls[0]["argv"]
    assert argv[argv.index("--deployment-name") + 1] == "v1-manual"
    assert argv[argv.index("--team") + 1] == "voice-team"
    printed = json.loads(proc.stdout)
    assert printed == json.loads((repo / "out" / "rec.json").read_text())
    assert printed["deployment_ws_url"].startswith("ws://127.0.0.1:9999/deployment/")


def test_key_echoed_by_truss_is_redacted(repo):
    proc, _ = run_push(repo, FAKE_TRUSS_MODE="echo_key")
    assert proc.returncode == 0
    assert "Api-Key ***" in proc.stderr
    assert KEY not in proc.stdout + proc.stderr


def test_noise_before_the_json_is_tolerated(repo):
    proc, _ = run_push(repo, FAKE_TRUSS_MODE="noise")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            "build_failed",
            "Deployment failed with status BUILD_FAILED. (deployment q8x7v6w is BUILD_FAILED)",
        ),
        ("unauthorized", "Invalid API key (HTTP 401)"),
        ("crash", "exited 1 without a JSON result"),
    ],
)
def test_failures_exit_1_with_the_reason_and_write_no_record(repo, mode, message):
    proc, _ = run_push(repo, FAKE_TRUSS_MODE=mode)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert not (repo / "deployment-demo_truss.json").exists()


def test_missing_key_is_a_usage_error_and_truss_is_not_called(repo):
    proc, calls = run_push(repo, key=None)
    assert proc.returncode == 2 and "BASETEN_API_KEY is not set" in proc.stderr
    assert calls == []


def test_outside_git_needs_an_explicit_name(tmp_path):
    (tmp_path / "demo_truss").mkdir()
    (tmp_path / "demo_truss" / "config.yaml").write_text("model_name: x\n")
    proc, calls = run_push(tmp_path)
    assert proc.returncode == 2 and "git rev-parse" in proc.stderr and calls == []
    proc, calls = run_push(tmp_path, "--deployment-name", "manual-1")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "deployment-demo_truss.json").read_text())
    assert record["git_sha"] is None and record["deployment_name"] == "manual-1"


def test_dirty_marker_tracks_what_would_be_pushed(repo):
    truss_dir = repo / "demo_truss"
    config = ps.truss_config(truss_dir)
    assert not ps.git_state(truss_dir, config).dirty
    (repo / "docs.md").write_text("changed, but not pushed\n")
    assert not ps.git_state(truss_dir, config).dirty
    (repo / "shared" / "lib_code.py").write_text("X = 2\n")  # bundled via external_package_dirs
    assert ps.git_state(truss_dir, config).dirty
    git(repo, "checkout", "--", "shared")
    (truss_dir / "model" / "new.py").write_text("")  # untracked files are pushed too
    state = ps.git_state(truss_dir, config)
    assert state.dirty
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert ps.deployment_name(state, when) == f"{state.sha}-dirty-20250304050607"


def test_parse_push_output_takes_the_last_object():
    text = 'warning {x}\n{\n  "a": 1\n}\nmore\n{"model_id": "m", "nested": {"k": 1}}\n'
    assert ps.parse_push_output(text) == {"model_id": "m", "nested": {"k": 1}}
    with pytest.raises(ps.PushError):
        ps.parse_push_output("no json here")


def test_development_deployment_is_refused(repo):
    result = {
        "model_id": "m",
        "model_version_id": "d",
        "predict_url": "https://h/x",
        "is_draft": True,
    }
    with pytest.raises(ps.PushError, match="development"):
        ps.build_record(result, repo / "demo_truss", {}, "n", None)


def test_flags_exist_in_the_installed_truss_cli():
    """Every flag push.py passes is one the real truss 0.18.35 `truss push` accepts."""
    truss_bin = Path(sys.executable).parent / "truss"
    help_text = subprocess.run(
        [str(truss_bin), "push", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
        check=True,
    ).stdout
    real_flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text))
    cmd = ps.push_command("truss", Path("t"), "n", 10, config_file="c.yaml", team="x")
    used = {arg for arg in cmd if arg.startswith("--")}
    assert used <= real_flags, used - real_flags
    assert "--output" in real_flags and "--non-interactive" in real_flags
