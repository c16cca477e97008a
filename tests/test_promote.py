"""scripts/deploy/promote.py against the local fake management API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.deploy import promote as pr
from scripts.deploy.baseten_api import ConfigError, DeployError, ManagementClient, WaitTimeoutError
from tests.fake_baseten import DEFAULT_AUTOSCALING, FakeBaseten

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m1"
SETTINGS = {
    "min_replica": 1,
    "max_replica": 3,
    "concurrency_target": 12,
    "target_utilization_percentage": 75,
}


@pytest.fixture
def fake():
    with FakeBaseten() as server:
        yield server


@pytest.fixture
def client(fake):
    with ManagementClient(fake.api_key, fake.url, poll_interval_s=0) as c:
        yield c


def run_promote(client, deployment_id="new", **kwargs):
    return pr.promote(client, MODEL, deployment_id, **kwargs)


@pytest.fixture
def two(fake):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    return fake


def test_promotes_with_its_own_instance_type_waits_and_applies_autoscaling(two, client):
    result = run_promote(client, autoscaling=SETTINGS)
    assert result["promoted"] and result["production_deployment_id"] == "new"
    assert result["previous_deployment_id"] == "old"
    assert two.production(MODEL).current == "new"
    ((_, path, body),) = two.calls("POST", "/promote")
    assert path == f"/v1/models/{MODEL}/environments/production/promote"  # environment promotion
    # The instance type follows the deployment's config `resources`, not the old production's.
    assert body == {
        "deployment_id": "new",
        "scale_down_previous_deployment": True,
        "preserve_env_instance_type": False,
    }
    assert two.deployments[(MODEL, "old")].status == "SCALED_TO_ZERO"
    assert two.production(MODEL).autoscaling["concurrency_target"] == 12
    assert len(two.calls("GET", "/environments/production")) >= 3  # the ramp was followed


def test_keep_previous_reaches_the_body(two, client):
    run_promote(client, keep_previous=True)
    ((_, _, body),) = two.calls("POST", "/promote")
    assert body["scale_down_previous_deployment"] is False
    assert two.deployments[(MODEL, "old")].status == "ACTIVE"


def test_already_production_skips_the_promote_call(two, client):
    result = run_promote(client, "old", autoscaling=SETTINGS)
    assert not result["promoted"] and two.calls("POST") == []
    assert two.production(MODEL).autoscaling["concurrency_target"] == 12


def test_redeploy_on_promotion_confirms_the_copy(two, client):
    two.redeploy_on_promotion = True
    assert run_promote(client)["production_deployment_id"] == "new-copy"


def test_failed_promotion_leaves_production_and_explains(two, client):
    two.promotion_outcome = "FAILED"
    with pytest.raises(DeployError, match="replicas failed health checks"):
        run_promote(client)
    assert two.production(MODEL).current == "old"


@pytest.mark.parametrize("status", ["BUILD_FAILED", "BUILDING", "UNHEALTHY"])
def test_baseten_refuses_deployments_that_are_not_serving(two, client, status):
    two.add_deployment(MODEL, "new", [status])
    with pytest.raises(DeployError, match=status):
        run_promote(client)
    assert two.production(MODEL).current == "old"


def test_baseten_refuses_while_another_promotion_runs(two, client):
    two.production(MODEL).promotion = {"status": "RAMPING_UP", "percent_traffic_to_new_version": 5}
    two.production(MODEL).polls_left = 100
    with pytest.raises(DeployError, match="in progress"):
        run_promote(client)


def test_deployment_failing_during_promotion_stops_the_wait(two, client):
    two.promotion_polls = 50
    two.add_deployment(MODEL, "new", ["ACTIVE", "DEPLOY_FAILED"])
    with pytest.raises(DeployError, match="DEPLOY_FAILED"):
        run_promote(client)


def test_promotion_timeout(two, client, monkeypatch):
    two.promotion_polls = 10_000
    monkeypatch.setattr(pr, "PROMOTION_TIMEOUT_S", 0)
    with pytest.raises(WaitTimeoutError, match="does not serve new"):
        run_promote(client)


def test_autoscaling_yaml_validation(tmp_path):
    def load(text: str) -> dict[str, int]:
        path = tmp_path / "a.yaml"
        path.write_text(text)
        return pr.load_autoscaling(path)

    ok = load("min_replica: 1\nmax_replica: 2\nconcurrency_target: 8\n")
    assert ok == {"min_replica": 1, "max_replica": 2, "concurrency_target": 8}
    for bad, message in [
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: 8\nreplicas: 3\n", "unknown"),
        ("min_replica: 3\nmax_replica: 2\nconcurrency_target: 8\n", "max_replica"),
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: 0\n", "target >= 1"),
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: true\n", "integers"),
        ("min_replica: 1\nmax_replica: 2\n", "concurrency_target"),
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: 4\n"
         "target_utilization_percentage: 120\n", "1..100"),
        ("- 1\n", "not a mapping"),
        ("a: [\n", "cannot read"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load(bad)


@pytest.mark.parametrize(
    ("truss", "session_cap_key"),
    [("whisper_streaming_truss", "max_sessions"), ("orpheus_tts_truss", "max_sessions")],
)
def test_checked_in_autoscaling_files_are_valid_and_not_the_default(truss, session_cap_key):
    settings = pr.load_autoscaling(ROOT / truss / "autoscaling.yaml")
    assert settings["concurrency_target"] > DEFAULT_AUTOSCALING["concurrency_target"]
    assert settings["min_replica"] >= 1  # no cold start in front of real-time callers
    # A replica refuses sessions beyond its own cap (close 1013): the autoscaler must add
    # replicas well before that, or callers are turned away while capacity could grow.
    for config in sorted((ROOT / truss).glob("config*.yaml")):
        metadata = yaml.safe_load(config.read_text())["model_metadata"]
        assert settings["concurrency_target"] < metadata[session_cap_key]
        # Nor may admission refuse what the autoscaler asks a replica to hold (Baseten counts
        # open WebSockets against the target; bench-capacity writes the knee to both).
        assert settings["concurrency_target"] <= metadata["admission_capacity_sessions"]


def cli(fake: FakeBaseten, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASETEN_")}
    env["BASETEN_API_URL"] = fake.url
    if key is not None:
        env["BASETEN_API_KEY"] = key
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "deploy" / "promote.py"), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def test_cli_success_json_and_no_key_in_output(two):
    autoscaling = ROOT / "whisper_streaming_truss" / "autoscaling.yaml"
    proc = cli(two, "--model-id", MODEL, "--deployment-id", "new", "--poll-interval", "0",
               "--json", "--autoscaling", str(autoscaling), key=two.api_key)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["production_deployment_id"] == "new"
    assert out["previous_deployment_id"] == "old"
    wanted = pr.load_autoscaling(autoscaling)["concurrency_target"]
    assert out["autoscaling"]["concurrency_target"] == wanted
    assert two.api_key not in proc.stdout + proc.stderr


def test_cli_failure_exit_codes(fake):
    fake.add_deployment(MODEL, "new", ["BUILD_FAILED"])
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new", key=fake.api_key)
    assert proc.returncode == 1 and "a deployment that is BUILD_FAILED" in proc.stdout
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new")
    assert proc.returncode == 2 and "BASETEN_API_KEY is not set" in proc.stderr
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new", key="not-the-key")
    assert proc.returncode == 1 and "HTTP 401" in proc.stdout
    assert "not-the-key" not in proc.stdout + proc.stderr
