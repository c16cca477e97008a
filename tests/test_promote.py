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
from scripts.deploy.baseten_api import (
    ConfigError,
    DeploymentFailedError,
    ManagementClient,
    WaitTimeoutError,
)
from tests.fake_baseten import DEFAULT_AUTOSCALING, FakeBaseten

ROOT = Path(__file__).resolve().parent.parent
MODEL = "m1"
SETTINGS = pr.AutoscalingSettings(
    min_replica=1, max_replica=3, concurrency_target=12, target_utilization_percentage=75
)


@pytest.fixture
def fake():
    with FakeBaseten() as server:
        yield server


@pytest.fixture
def client(fake):
    with ManagementClient(fake.api_key, fake.url, sleep=lambda s: None) as c:
        yield c


def run_promote(client, deployment_id="new", **kwargs):
    kwargs.setdefault("poll_interval_s", 0)
    kwargs.setdefault("sleep", lambda s: None)
    return pr.promote(client, MODEL, deployment_id, **kwargs)


def test_promotes_waits_for_production_and_applies_autoscaling(fake, client):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    log: list[str] = []
    result = run_promote(client, autoscaling=SETTINGS, log=log.append)
    assert result.promoted and result.previous_deployment_id == "old"
    assert result.production_deployment_id == "new"
    env = fake.production(MODEL)
    assert env.current == "new" and env.promotion is None
    assert env.autoscaling["concurrency_target"] == 12 and env.autoscaling["max_replica"] == 3
    assert result.autoscaling_status == "ACCEPTED"
    # the promotion was seen ramping before it finished
    assert any("RAMPING_UP" in line for line in log)
    ((_, _, body),) = fake.calls("POST", "/promote")
    assert body == {"scale_down_previous_production": True, "preserve_env_instance_type": True}
    ((_, _, patch),) = fake.calls("PATCH")
    assert patch == {"autoscaling_settings": SETTINGS.as_request()}
    assert fake.deployments[(MODEL, "old")].status == "SCALED_TO_ZERO"


def test_keep_previous_and_instance_type_flags_reach_the_body(fake, client):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    run_promote(client, scale_down_previous=False, preserve_env_instance_type=False)
    ((_, _, body),) = fake.calls("POST", "/promote")
    assert body == {"scale_down_previous_production": False, "preserve_env_instance_type": False}
    assert fake.deployments[(MODEL, "old")].status == "ACTIVE"


def test_already_production_skips_the_promote_call(fake, client):
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "new")
    result = run_promote(client, autoscaling=SETTINGS)
    assert not result.promoted and result.previous_deployment_id is None
    assert fake.calls("POST") == []
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 12


def test_unchanged_settings_are_reported(fake, client):
    fake.add_deployment(MODEL, "new")
    env = fake.set_production(MODEL, "new")
    env.autoscaling.update(SETTINGS.as_request())
    assert run_promote(client, autoscaling=SETTINGS).autoscaling_status == "UNCHANGED"


def test_first_production_deployment_when_no_environment_exists(fake, client):
    fake.add_deployment(MODEL, "new")
    result = run_promote(client)
    assert result.promoted and result.previous_deployment_id is None
    assert fake.production(MODEL).current == "new"


def test_redeploy_on_promotion_confirms_the_copy(fake, client):
    fake.redeploy_on_promotion = True
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, None)
    result = run_promote(client)
    assert result.production_deployment_id == "new-copy"
    assert fake.production(MODEL).current == "new-copy"


def test_rate_limited_promote_is_retried_with_the_hint(fake):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    fake.inject(429, retry_after="3", method="POST", times=2)
    sleeps: list[float] = []
    with ManagementClient(fake.api_key, fake.url, sleep=sleeps.append) as client:
        run_promote(client)
    assert sleeps == [3.0, 3.0]
    assert len(fake.calls("POST")) == 3
    assert fake.production(MODEL).current == "new"


def test_failed_promotion_leaves_production_and_explains(fake, client):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    fake.promotion_outcome = "FAILED"
    with pytest.raises(pr.PromotionError, match="FAILED: replicas failed health checks"):
        run_promote(client, autoscaling=SETTINGS)
    assert fake.production(MODEL).current == "old"
    assert fake.calls("PATCH") == []  # no settings change on a failed promotion


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ("BUILD_FAILED", "cannot serve production"),
        ("DEPLOY_FAILED", "cannot serve"),
        ("BUILDING", "wait until it is ACTIVE"),
        ("LOADING_MODEL", "still LOADING_MODEL"),
    ],
)
def test_refuses_failed_or_unfinished_deployments(fake, client, status, message):
    fake.add_deployment(MODEL, "new", [status])
    fake.set_production(MODEL, "old")
    with pytest.raises(pr.PromotionError, match=message):
        run_promote(client)
    assert fake.calls("POST") == []


def test_refuses_while_another_promotion_runs(fake, client):
    fake.add_deployment(MODEL, "new")
    env = fake.set_production(MODEL, "old")
    env.promotion = {"status": "RAMPING_UP", "percent_traffic_to_new_version": 30}
    env.polls_left = 100
    with pytest.raises(pr.PromotionError, match="another promotion"):
        run_promote(client)


def test_deployment_failing_during_promotion_stops_the_wait(fake, client):
    fake.add_deployment(MODEL, "old")
    dep = fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    fake.promotion_polls = 100

    def sleep(_: float) -> None:
        dep.set_status("DEPLOY_FAILED")

    with pytest.raises(DeploymentFailedError, match="DEPLOY_FAILED"):
        run_promote(client, sleep=sleep)


def test_unhealthy_during_promotion_is_waited_out(fake, client):
    """UNHEALTHY is not terminal: Baseten restarts the replicas and the deployment can recover."""
    fake.add_deployment(MODEL, "old")
    dep = fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    fake.promotion_polls = 3
    seen = []

    def sleep(_: float) -> None:
        seen.append(dep.status)
        dep.set_status("UNHEALTHY" if len(seen) == 1 else "ACTIVE")

    result = run_promote(client, sleep=sleep)
    assert result.production_deployment_id == "new" and "UNHEALTHY" in [dep.status, *seen[1:]]


def test_unhealthy_deployment_is_not_promoted(fake, client):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new", ["UNHEALTHY"])
    fake.set_production(MODEL, "old")
    with pytest.raises(pr.PromotionError, match="is still UNHEALTHY: wait until it is ACTIVE"):
        run_promote(client)


def test_promotion_timeout(fake, client):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    fake.promotion_polls = 1000
    ticks = iter(range(10_000))
    with pytest.raises(WaitTimeoutError, match="production still serves old"):
        run_promote(client, timeout_s=5, clock=lambda: float(next(ticks)))


def test_autoscaling_yaml_validation(tmp_path):
    def load(text: str) -> pr.AutoscalingSettings:
        path = tmp_path / "a.yaml"
        path.write_text(text)
        return pr.AutoscalingSettings.from_yaml(path)

    ok = load("min_replica: 1\nmax_replica: 2\nconcurrency_target: 8\n")
    assert ok.as_request() == {"min_replica": 1, "max_replica": 2, "concurrency_target": 8}
    for bad, message in [
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: 8\nreplicas: 3\n", "unknown"),
        ("min_replica: 3\nmax_replica: 2\nconcurrency_target: 8\n", "max_replica"),
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: 0\n", "concurrency_target"),
        ("min_replica: 1\nmax_replica: 2\nconcurrency_target: true\n", "integer"),
        ("min_replica: 1\nmax_replica: 2\n", "lack: concurrency_target"),
        (
            "min_replica: 1\nmax_replica: 2\nconcurrency_target: 4\n"
            "target_utilization_percentage: 120\n",
            "1..100",
        ),
        ("- 1\n", "mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(bad)


@pytest.mark.parametrize(
    ("truss", "session_cap_key"),
    [("whisper_streaming_truss", "max_sessions"), ("orpheus_tts_truss", "max_sessions")],
)
def test_checked_in_autoscaling_files_are_valid_and_not_the_default(truss, session_cap_key):
    settings = pr.AutoscalingSettings.from_yaml(ROOT / truss / "autoscaling.yaml")
    assert settings.concurrency_target > DEFAULT_AUTOSCALING["concurrency_target"]
    assert settings.min_replica >= 1  # no cold start in front of real-time callers
    # A replica refuses sessions beyond its own cap (close 1013): the autoscaler must add
    # replicas well before that, or callers are turned away while capacity could grow.
    metadata = yaml.safe_load((ROOT / truss / "config.yaml").read_text())["model_metadata"]
    assert settings.concurrency_target < metadata[session_cap_key]


def cli(fake: FakeBaseten, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASETEN_")}
    env["BASETEN_API_URL"] = fake.url
    if key is not None:
        env["BASETEN_API_KEY"] = key
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "deploy" / "promote.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_success_json_and_no_key_in_output(fake):
    fake.add_deployment(MODEL, "old")
    fake.add_deployment(MODEL, "new")
    fake.set_production(MODEL, "old")
    proc = cli(
        fake,
        "--model-id",
        MODEL,
        "--deployment-id",
        "new",
        "--poll-interval",
        "0",
        "--json",
        "--autoscaling",
        str(ROOT / "whisper_streaming_truss" / "autoscaling.yaml"),
        key=fake.api_key,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["production_deployment_id"] == "new"
    assert out["previous_deployment_id"] == "old"
    assert out["autoscaling"]["concurrency_target"] == 16
    assert fake.api_key not in proc.stdout + proc.stderr


def test_cli_failure_exit_codes(fake):
    fake.add_deployment(MODEL, "new", ["BUILD_FAILED"])
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new", key=fake.api_key)
    assert proc.returncode == 1
    assert "FAIL promote: deployment new is BUILD_FAILED" in proc.stderr
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new")
    assert proc.returncode == 2 and "BASETEN_API_KEY is not set" in proc.stderr
    proc = cli(fake, "--model-id", MODEL, "--deployment-id", "new", key="not-the-key")
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr
    assert "not-the-key" not in proc.stdout + proc.stderr
