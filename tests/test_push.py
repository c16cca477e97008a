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
    env.update(FAKE_TRUSS_LOG=str(repo / "truss_calls.jsonl"), TRUSS_BIN=str(FAKE_TRUSS))
    env.update(fake_env)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "deploy" / "push.py"), "demo_truss", *args],
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


def test_push_without_wait_records_the_deployment_named_after_the_commit(repo):
    proc, calls = run_push(repo, FAKE_TRUSS_MODEL_ID="m1", FAKE_TRUSS_DEPLOYMENT_ID="d1")
    assert proc.returncode == 0, proc.stderr
    (call,) = calls
    sha = git(repo, "rev-parse", "--short=10", "HEAD")
    assert call["argv"][:2] == ["push", "demo_truss"]
    assert "--wait" not in call["argv"]  # truss's wait gives up at the first UNHEALTHY
    assert call["argv"][call["argv"].index("--deployment-name") + 1] == sha
    assert call["remote_url"] == "https://app.baseten.co" and call["api_key"] == KEY
    record = ps.DeploymentRecord.read(repo / "deployment-demo_truss.json")
    assert record.model_id == "m1" and record.deployment_id == "d1"
    assert record.deployment_name == sha and record.model_name == "demo-speech"
    assert KEY not in proc.stdout + proc.stderr


def test_candidate_and_production_urls_from_the_predict_url():
    url = "https://model-abc.api.baseten.co/deployment/q1/predict"
    record = ps.DeploymentRecord("m", "abc", "q1", "sha", predict_url=url)
    host = "model-abc.api.baseten.co"
    assert record.url("stt") == f"wss://{host}/deployment/q1/websocket"  # before any promotion
    assert record.url("tts", production=True) == f"wss://{host}/environments/production/websocket"
    assert record.url("http") == f"https://{host}/deployment/q1/predict"
    assert record.url("http", production=True) == f"https://{host}/environments/production/predict"
    record.predict_url = "http://127.0.0.1:8080/deployment/q1/predict"
    assert record.url("tts") == "ws://127.0.0.1:8080/deployment/q1/websocket"


def test_config_flag_reaches_truss_and_names_the_record(repo):
    (repo / "demo_truss" / "config_http.yaml").write_text("model_name: demo-http\n")
    proc, calls = run_push(repo, "--config", "config_http.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    argv = calls[0]["argv"]
    assert argv[argv.index("--config") + 1] == str(repo / "demo_truss" / "config_http.yaml")
    assert json.loads(proc.stdout)["model_name"] == "demo-http"  # the flavour's config was read
    rec = ps.DeploymentRecord.read(repo / "deployment-demo_truss-config_http.json")
    assert rec.model_name == "demo-http" and rec.url("http").endswith("/predict")


def test_key_echoed_by_truss_is_redacted(repo):
    proc, _ = run_push(repo, FAKE_TRUSS_MODE="echo_key")
    assert proc.returncode == 0 and KEY not in proc.stderr and "***" in proc.stderr


@pytest.mark.parametrize(
    ("mode", "message"),
    [("build_failed", "BUILD_FAILED"), ("unauthorized", "Invalid API key"),
     ("crash", "no JSON result")],
)  # fmt: skip
def test_failures_exit_1_with_the_reason_and_write_no_record(repo, mode, message):
    proc, _ = run_push(repo, FAKE_TRUSS_MODE=mode)
    assert proc.returncode == 1 and message in proc.stderr
    assert not (repo / "deployment-demo_truss.json").exists()


def test_missing_key_is_a_usage_error_and_truss_is_not_called(repo):
    proc, calls = run_push(repo, key=None)
    assert proc.returncode == 2 and "BASETEN_API_KEY is not set" in proc.stderr and calls == []


def test_dirty_marker_tracks_what_would_be_pushed(repo):
    truss_dir = repo / "demo_truss"
    config = ps.truss_config(truss_dir)
    sha = git(repo, "rev-parse", "--short=10", "HEAD")
    assert ps.deployment_name(truss_dir, config) == sha
    (repo / "docs.md").write_text("changed, but not pushed\n")
    assert ps.deployment_name(truss_dir, config) == sha
    (repo / "shared" / "lib_code.py").write_text("X = 2\n")  # bundled via external_package_dirs
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert ps.deployment_name(truss_dir, config, when) == f"{sha}-dirty-20250304050607"


def test_other_output_on_stdout_before_truss_answer_is_skipped(repo):
    proc, _ = run_push(repo, "--json", FAKE_TRUSS_MODE="noise", FAKE_TRUSS_DEPLOYMENT_ID="d9")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deployment_id"] == "d9"


def test_flags_exist_in_the_installed_truss_cli():
    """Every flag push.py passes is one the real truss 0.18.35 `truss push` accepts."""
    truss_bin = Path(sys.executable).parent / "truss"
    help_text = subprocess.run(
        [str(truss_bin), "push", "--help"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}, check=True,
    ).stdout  # fmt: skip
    real_flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text))
    cmd = ps.push_command("truss", Path("t"), "n", "c.yaml", "team")
    used = {arg for arg in cmd if arg.startswith("--")}
    assert used <= real_flags, used - real_flags
    assert "--config" in used and "--wait" not in used
