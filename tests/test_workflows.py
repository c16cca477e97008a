"""The GitHub workflows: actionlint, their structure, and the deploy target selection script."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
TEST = WORKFLOWS / "test.yml"
DEPLOY = WORKFLOWS / "deploy.yml"
# checkout, setup-python and the pip install before deploy.py starts (generous).
DEPLOY_SETUP_S = 15 * 60
GITHUB_JOB_TIMEOUT_MAX_MIN = 360  # hosted runners
TRUSS_BY_MODEL = {"whisper": "whisper_streaming_truss", "orpheus": "orpheus_tts_truss"}


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as the boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def actionlint_binary() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.exists() else shutil.which("actionlint")


def test_actionlint_passes():
    binary = actionlint_binary()
    if binary is None:
        # requirements-dev.txt installs it on Linux x86-64 (CI); elsewhere it may be absent.
        assert (sys.platform, platform.machine()) != ("linux", "x86_64"), "actionlint missing"
        pytest.skip("no actionlint binary for this platform")
    proc = subprocess.run(
        [binary, "-no-color", str(CI), str(TEST), str(DEPLOY)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The checker is live: an undefined job dependency and a bad expression are reported."""
    binary = actionlint_binary()
    if binary is None:
        assert (sys.platform, platform.machine()) != ("linux", "x86_64"), "actionlint missing"
        pytest.skip("no actionlint binary for this platform")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    needs: nope\n    runs-on: ubuntu-24.04\n"
        "    steps:\n      - run: echo ${{ matrix.x }}\n"
    )
    proc = subprocess.run(
        [binary, "-no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1 and "nope" in proc.stdout


def test_ci_runs_the_readme_test_command_once_per_commit():
    ci = load(CI)
    assert {"pull_request", "push"} <= set(ci["on"])
    # A pull request's commits are tested by the pull_request event only: pushes run on main.
    assert ci["on"]["push"] == {"branches": ["main"]}
    assert ci["jobs"]["test"]["uses"] == "./.github/workflows/test.yml"
    (job,) = load(TEST)["jobs"].values()
    steps = job["steps"]
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["python-version"] == "3.11" and setup["with"]["cache"] == "pip"
    assert job["runs-on"].startswith("ubuntu")
    assert any(s.get("run", "").strip().startswith("make test") for s in steps)


def test_a_run_on_main_is_never_cancelled_halfway():
    concurrency = load(CI)["concurrency"]
    assert concurrency["cancel-in-progress"] == "${{ github.ref != 'refs/heads/main' }}"


def test_deploy_only_after_the_tests_passed_on_that_commit():
    ci = load(CI)["jobs"]
    # Pushes to main: CI's own test job gates the deploy of the same commit.
    assert ci["deploy"]["needs"] == "test"
    assert ci["deploy"]["uses"] == "./.github/workflows/deploy.yml"
    assert "refs/heads/main" in ci["deploy"]["if"] and "push" in ci["deploy"]["if"]
    deploy = load(DEPLOY)
    assert set(deploy["on"]) == {"workflow_call", "workflow_dispatch"}  # never on its own push
    # By hand: the tests run first, in the deploy workflow.
    jobs = deploy["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/test.yml"
    assert jobs["targets"]["needs"] == "test"
    assert "!failure()" in jobs["targets"]["if"] and "!cancelled()" in jobs["targets"]["if"]
    assert jobs["deploy"]["needs"] == "targets"
    assert "needs.targets.result == 'success'" in jobs["deploy"]["if"]


def test_deploy_job_timeout_covers_the_scripts_worst_case():
    from scripts.deploy import deploy as dp
    from scripts.deploy.push import truss_config

    minutes = load(DEPLOY)["jobs"]["deploy"]["timeout-minutes"]
    assert minutes <= GITHUB_JOB_TIMEOUT_MAX_MIN
    for truss in dp.KIND_BY_TRUSS:
        for path in sorted((ROOT / truss).glob("config*.yaml")):
            config = truss_config(ROOT / truss, path.name)
            worst = dp.worst_case_s(config)
            # upload + cold build + start-up threshold + smoke/load tests + promotion + rollback
            assert worst >= dp.active_timeout_s(config) + 60 * 60, worst
            assert minutes * 60 >= worst + DEPLOY_SETUP_S, (path, worst / 60)


def test_deploy_triggers_by_hand():
    deploy = load(DEPLOY)
    choice = deploy["on"]["workflow_dispatch"]["inputs"]["model"]
    assert choice["type"] == "choice"
    assert {*TRUSS_BY_MODEL, "orpheus-http", "all"} <= set(choice["options"])
    for truss in TRUSS_BY_MODEL.values():
        assert (ROOT / truss / "config.yaml").exists() and (
            ROOT / truss / "autoscaling.yaml"
        ).exists()


def test_deploy_job_is_serialised_per_model_and_uses_the_secret():
    job = load(DEPLOY)["jobs"]["deploy"]
    assert job["concurrency"]["group"] == "deploy-${{ matrix.model }}"
    assert job["concurrency"]["cancel-in-progress"] is False
    run_step = next(s for s in job["steps"] if "scripts/deploy/deploy.py" in s.get("run", ""))
    assert run_step["env"]["BASETEN_API_KEY"] == "${{ secrets.BASETEN_API_KEY }}"
    for model, truss in TRUSS_BY_MODEL.items():
        assert f"{model}) truss_dir={truss}" in run_step["run"]
    assert "orpheus-http) truss_dir=orpheus_tts_truss; config=config_http.yaml" in run_step["run"]
    assert "--require-hf-token" in run_step["run"]
    assert run_step["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    # the secret only ever reaches the environment (deploy, and changed.py's look-up), never a
    # command line
    text = DEPLOY.read_text()
    assert text.count("secrets.BASETEN_API_KEY") == 2
    targets = next(s for s in load(DEPLOY)["jobs"]["targets"]["steps"] if s.get("id") == "targets")
    assert targets["env"]["BASETEN_API_KEY"] == "${{ secrets.BASETEN_API_KEY }}"
    assert load(DEPLOY)["on"]["workflow_call"]["secrets"]["BASETEN_API_KEY"]["required"] is True


def test_deploy_installs_pins_that_exist():
    pins = (ROOT / "requirements-dev.txt").read_text()
    for package in _deploy_pins():
        assert f"\n{package}==" in pins, package


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


@pytest.fixture
def history(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A repo with one commit per area, to feed the target script real diffs."""
    _git(tmp_path, "init", "-q")
    shas = {}
    for name in ("base", "whisper_streaming_truss", "orpheus_tts_truss", "shared", "docs"):
        path = tmp_path / (name if name not in ("base", "docs") else "") / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        _git(tmp_path, "add", ".")
        _git(tmp_path, "commit", "-qm", name)
        shas[name] = _git(tmp_path, "rev-parse", "HEAD")
    return tmp_path, shas


def test_targets_are_what_changed_since_each_models_production_commit(history, tmp_path):
    """changed.py: production's deployment name is the commit it was pushed from."""
    from scripts.deploy import changed
    from scripts.deploy.baseten_api import ManagementClient
    from tests.fake_baseten import FakeBaseten

    repo, shas = history
    for truss in ("whisper_streaming_truss", "orpheus_tts_truss"):
        (repo / truss).mkdir(exist_ok=True)
        for name in ("config.yaml", "config_http.yaml"):
            (repo / truss / name).write_text(
                (ROOT / truss / name).read_text() if (ROOT / truss / name).exists() else ""
            )
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "configs")
    shas["configs"] = _git(repo, "rev-parse", "HEAD")
    names = {"mw": "whisper-streaming", "mo": "orpheus-tts-websocket", "mh": "orpheus-tts-http"}

    def targets(production: dict[str, str]) -> list[str]:
        with FakeBaseten(api_key="k") as api, ManagementClient("k", api.url) as client:
            api.models = {i: names[i] for i in production}
            for model_id, sha in production.items():
                api.add_deployment(model_id, "d-" + model_id, name=sha)
                api.set_production(model_id, "d-" + model_id)
            models = {n: i for i, n in api.models.items()}
            return [t for t in changed.TARGETS if changed.needs_deploy(client, models, repo, t)]

    head = shas["configs"][:10]
    assert targets({"mw": head, "mo": head, "mh": head}) == []
    # Whisper's production is older than the last orpheus change: only what changed since counts.
    assert targets({"mw": shas["orpheus_tts_truss"], "mo": head, "mh": head}) == ["whisper"]
    # shared/ is bundled into both trusses (external_package_dirs).
    assert targets({"mw": shas["whisper_streaming_truss"], "mo": head, "mh": head}) == ["whisper"]
    assert targets({"mw": shas["base"], "mo": head, "mh": head}) == ["whisper"]
    everything = targets({"mw": shas["base"], "mo": shas["base"], "mh": shas["base"]})
    assert everything == ["whisper", "orpheus", "orpheus-http"]
    # No model yet, a dirty push, or a commit not in the history: deploy.
    assert targets({"mo": head, "mh": f"{head}-dirty-20250101000000"}) == [
        "whisper",
        "orpheus-http",
    ]
    assert targets({"mw": "0" * 10, "mo": head, "mh": head}) == ["whisper"]


def run_targets(repo: Path, tmp_path: Path, **env: str) -> list[str]:
    step = next(s for s in load(DEPLOY)["jobs"]["targets"]["steps"] if s.get("id") == "targets")
    out = tmp_path / "github_output"
    out.write_text("")
    subprocess.run(
        ["bash", "-c", step["run"]], cwd=repo, check=True, capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(out), **env},
    )  # fmt: skip
    (line,) = out.read_text().splitlines()
    key, value = line.split("=", 1)
    assert key == "models"
    return json.loads(value)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("whisper", ["whisper"]), ("orpheus-http", ["orpheus-http"]),
     ("all", ["whisper", "orpheus", "orpheus-http"])],
)  # fmt: skip
def test_targets_for_manual_dispatch(history, tmp_path, choice, expected):
    repo, _ = history
    assert (
        run_targets(repo, tmp_path, EVENT_NAME="workflow_dispatch", INPUT_MODEL=choice) == expected
    )


def _deploy_pins() -> list[str]:
    install = next(
        s
        for s in load(DEPLOY)["jobs"]["deploy"]["steps"]
        if "deploy-requirements.txt" in s.get("run", "")
    )
    return re.search(r"grep -E '\^\(([^)]*)\)=='", install["run"]).group(1).split("|")


def _closure(names: list[str]) -> set[str]:
    """The distributions ``pip install names`` brings, as this venv resolved them."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, seen = list(names), set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_deploy_tools_run_on_the_deploy_jobs_install_set(tmp_path):
    """The deploy job installs only some pins (and the project with --no-deps): the deploy
    pipeline, the smoke test with its clients, WER and WAV reader must run on exactly that.
    A site folder holding only those distributions (linked from this venv) stands in for it."""
    from importlib import metadata

    site = tmp_path / "site-packages"
    site.mkdir()
    for name in _closure(_deploy_pins()):
        dist = metadata.distribution(name)
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    first_party = [ROOT, ROOT / "shared", ROOT / "whisper_streaming_truss" / "packages",
                   ROOT / "orpheus_tts_truss" / "packages"]  # fmt: skip
    code = """
import scripts.deploy.deploy, scripts.deploy.smoke_test, scripts.deploy.promote
import scripts.deploy.changed, scripts.deploy.loadtest, scripts.bench.stt, scripts.clients.tts
from scripts.bench.wer import wer
from scripts.clients.stt import frames_of, read_wav
assert wer("nine apples", "9 apples") == 0.0
assert frames_of(read_wav("samples/speech_en.wav"))
"""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.pathsep.join(map(str, [site, *first_party])),
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
