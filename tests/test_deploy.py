"""scripts/deploy/deploy.py: the step order and every failure path, against the local fake Baseten API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import SAMPLE_RATE_HZ
from scripts.deploy import deploy as dp
from scripts.deploy import push as ps
from scripts.deploy import smoke_test as st
from scripts.deploy.baseten_api import ManagementClient, deployment_ws_url, environment_ws_url
from scripts.deploy.promote import AutoscalingSettings
from tests.fake_baseten import FakeBaseten, FakeInferenceGateway

ROOT = Path(__file__).resolve().parent.parent
FAKE_TRUSS = ROOT / "tests" / "fixtures" / "fake_truss_cli" / "truss"
MODEL, OLD, NEW = "mdl", "old1", "new2"
BASE = "wss://model-mdl.api.baseten.co"
SETTINGS = AutoscalingSettings(min_replica=1, max_replica=2, concurrency_target=16)


def record(deployment_id: str = NEW) -> ps.DeploymentRecord:
    return ps.DeploymentRecord(
        truss_dir="orpheus_tts_truss",
        model_name="orpheus",
        model_id=MODEL,
        deployment_id=deployment_id,
        deployment_name="abc123",
        git_sha="abc123",
        dirty=False,
        status="ACTIVE",
        is_production=False,
        predict_url=f"https://model-{MODEL}.api.baseten.co/deployment/{deployment_id}/predict",
        logs_url="https://app.baseten.co/logs",
        deployment_ws_url=deployment_ws_url(BASE, deployment_id),
        production_ws_url=environment_ws_url(BASE),
        pushed_at="2025-01-01T00:00:00+00:00",
    )


class FakeSmoke:
    """Smoke results by URL kind; records the URLs it was asked about."""

    def __init__(self, deployment_ok: bool = True, production_ok: bool | list[bool] = True):
        self.results = {
            "deployment": [deployment_ok],
            "production": (production_ok if isinstance(production_ok, list) else [production_ok]),
        }
        self.urls: list[str] = []

    def __call__(self, options: st.SmokeOptions) -> st.SmokeResult:
        self.urls.append(options.url)
        assert options.kind == "tts" and options.api_key == "k"
        which = "production" if "/environments/production/" in options.url else "deployment"
        ok = self.results[which].pop(0)
        verdict = "2.00 s of audio" if ok else "only 0.10 s of audio (need 1.00 s)"
        return st.SmokeResult(ok, "tts", options.url, verdict, {"audio_s": 2.0 if ok else 0.1})


@pytest.fixture
def fake():
    with FakeBaseten(api_key="k") as server:
        server.add_deployment(MODEL, OLD)
        server.add_deployment(MODEL, NEW, ["BUILDING", "LOADING_MODEL", "ACTIVE"])
        server.set_production(MODEL, OLD)
        yield server


def deployer(fake, tmp_path, smoke, push_fn=None, **opts) -> dp.Deployer:
    options = dp.DeployOptions(
        truss_dir=ROOT / "orpheus_tts_truss",
        kind="tts",
        autoscaling=SETTINGS,
        record_path=tmp_path / "rec.json",
        api_key="k",
        poll_interval_s=0,
        **opts,
    )
    client = ManagementClient("k", fake.url, sleep=lambda s: None)
    return dp.Deployer(
        options,
        client,
        push_fn=push_fn or (lambda d, api_key: record()),
        smoke_fn=smoke,
        sleep=lambda s: None,
        log=lambda line: None,
    )


def step_names(report: dp.DeployReport) -> list[tuple[str, bool]]:
    return [(s.name, s.ok) for s in report.steps]


def test_happy_path_runs_every_step_in_order(fake, tmp_path):
    smoke = FakeSmoke()
    report = deployer(fake, tmp_path, smoke).run()
    assert report.ok
    assert step_names(report) == [
        ("preflight", True),
        ("push", True),
        ("wait ACTIVE", True),
        ("smoke deployment", True),
        ("promote", True),
        ("smoke production", True),
        ("release previous", True),
    ]
    assert smoke.urls == [deployment_ws_url(BASE, NEW), environment_ws_url(BASE)]
    assert fake.production(MODEL).current == NEW
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 16
    assert report.previous_production_id == OLD and report.production_deployment_id == NEW
    assert f"--deployment-id {OLD}" in report.next_steps  # how to roll back
    assert json.loads((tmp_path / "rec.json").read_text())["deployment_id"] == NEW
    md = report.markdown()
    assert f"deployment: `{NEW}`" in md and "| smoke production | pass |" in md


def test_push_failure_stops_before_any_api_call(fake, tmp_path):
    def failing_push(truss_dir, api_key):
        raise ps.PushError("truss push failed: Deployment failed with status BUILD_FAILED.")

    report = deployer(fake, tmp_path, FakeSmoke(), push_fn=failing_push).run()
    assert not report.ok and step_names(report) == [("preflight", True), ("push", False)]
    assert "production is untouched" in report.next_steps
    assert [path for _, path, _ in fake.calls()] == ["/v1/secrets"]
    assert fake.production(MODEL).current == OLD


def never_push(truss_dir, api_key):
    raise AssertionError("must not push")


def test_missing_baseten_secret_stops_before_the_build(fake, tmp_path):
    fake.secrets = {"something_else"}
    report = deployer(fake, tmp_path, FakeSmoke(), push_fn=never_push).run()
    assert step_names(report) == [("preflight", False)]
    assert "missing: hf_access_token" in report.steps[0].detail  # orpheus declares it
    assert "Settings > Secrets" in report.next_steps


def test_rejected_key_stops_before_the_build(fake, tmp_path):
    fake.inject(401, path_contains="/v1/secrets")
    report = deployer(fake, tmp_path, FakeSmoke(), push_fn=never_push).run()
    assert step_names(report) == [("preflight", False)]
    assert "rejected BASETEN_API_KEY" in report.steps[0].detail


def test_key_without_secret_listing_permission_still_deploys(fake, tmp_path):
    fake.inject(403, path_contains="/v1/secrets")
    report = deployer(fake, tmp_path, FakeSmoke()).run()
    assert report.ok and report.steps[0].detail.startswith("secrets not checked")


def test_failed_build_stops_at_wait_active(fake, tmp_path):
    fake.add_deployment(MODEL, NEW, ["BUILDING", "BUILD_FAILED"])
    smoke = FakeSmoke()
    report = deployer(fake, tmp_path, smoke).run()
    assert step_names(report)[1:] == [("push", True), ("wait ACTIVE", False)]
    assert "BUILD_FAILED" in report.steps[-1].detail and "logs" in report.next_steps
    assert smoke.urls == [] and fake.calls("POST") == []


def test_deployment_that_does_not_speak_is_never_promoted(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeSmoke(deployment_ok=False)).run()
    assert step_names(report)[-1] == ("smoke deployment", False)
    assert report.next_steps.startswith("production is untouched")
    assert fake.calls("POST") == [] and fake.calls("PATCH") == []
    assert fake.production(MODEL).current == OLD
    assert report.smoke["deployment"]["ok"] is False


def test_failed_promotion_reports_and_keeps_old_production(fake, tmp_path):
    fake.promotion_outcome = "FAILED"
    report = deployer(fake, tmp_path, FakeSmoke()).run()
    assert step_names(report)[-1] == ("promote", False)
    assert fake.production(MODEL).current == OLD
    assert f"should still serve {OLD}" in report.next_steps


def test_production_smoke_failure_rolls_back(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeSmoke(production_ok=False)).run()
    assert not report.ok and step_names(report)[-1] == ("smoke production", False)
    assert report.rolled_back and fake.production(MODEL).current == OLD
    assert report.production_deployment_id == OLD
    assert f"rolled back to {OLD}" in report.next_steps
    promotes = [path for _, path, _ in fake.calls("POST")]
    assert promotes == [
        f"/v1/models/{MODEL}/deployments/{NEW}/promote",
        f"/v1/models/{MODEL}/deployments/{OLD}/promote",
    ]


def test_previous_stays_warm_until_production_passed_its_smoke_test(fake, tmp_path):
    seen_during_smoke = []

    def smoke(options):
        if "/environments/production/" in options.url:
            # Promoted, not yet proven: the old deployment still has its replicas.
            seen_during_smoke.append(fake.deployments[(MODEL, OLD)].status)
            assert fake.deployments[(MODEL, OLD)].autoscaling is None
        return FakeSmoke()(options)

    report = deployer(fake, tmp_path, smoke).run()
    assert report.ok and seen_during_smoke == ["ACTIVE"]
    (_, _, body), *_ = fake.calls("POST", f"/deployments/{NEW}/promote")
    assert body["scale_down_previous_production"] is False
    # Then, and only then, it may scale down.
    (patch,) = fake.calls("PATCH", f"/deployments/{OLD}/autoscaling_settings")
    assert patch[2] == {"min_replica": 0}
    assert fake.deployments[(MODEL, OLD)].autoscaling["min_replica"] == 0
    assert step_names(report)[-1] == ("release previous", True)


def test_rollback_finds_the_previous_deployment_warm(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeSmoke(production_ok=False)).run()
    assert report.rolled_back and fake.production(MODEL).current == OLD
    assert fake.deployments[(MODEL, OLD)].status == "ACTIVE"  # never scaled down
    forward, back = [body for _, _, body in fake.calls("POST")]
    assert forward["scale_down_previous_production"] is False
    assert back["scale_down_previous_production"] is True  # the failing one may go
    assert fake.calls("PATCH", "/deployments/") == []


def test_release_failure_warns_but_production_stands(fake, tmp_path):
    fake.inject(500, path_contains="/autoscaling_settings")
    report = deployer(fake, tmp_path, FakeSmoke()).run()
    assert report.ok and report.steps[-1].detail.startswith("WARNING: could not let old1")


def test_team_secrets_are_checked_with_the_team_endpoint(fake, tmp_path):
    fake.secrets = set()  # the workspace-level list would say "missing"
    fake.teams = {"t-1": "Default Team", "t-9": "Voice"}
    fake.team_secrets = {"t-9": {"hf_access_token"}}
    report = deployer(fake, tmp_path, FakeSmoke(), team="Voice").run()
    assert report.ok and "team Voice secrets present: hf_access_token" in report.steps[0].detail
    report = deployer(fake, tmp_path, FakeSmoke(), push_fn=never_push, team="Nobody").run()
    assert step_names(report) == [("preflight", False)]
    assert "BASETEN_TEAM" in report.next_steps


def test_no_rollback_leaves_instructions(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeSmoke(production_ok=False), rollback=False).run()
    assert not report.rolled_back and fake.production(MODEL).current == NEW
    assert (
        f"python scripts/deploy/promote.py --model-id {MODEL} --deployment-id {OLD}"
        in report.next_steps
    )


def test_first_deployment_of_a_model_is_already_production(fake, tmp_path):
    fake.set_production(MODEL, NEW)  # Baseten promotes a new model's first deployment itself
    report = deployer(fake, tmp_path, FakeSmoke(deployment_ok=False)).run()
    assert "production is broken" in report.next_steps
    report = deployer(fake, tmp_path, FakeSmoke()).run()
    assert report.ok and fake.calls("POST") == [] and report.next_steps == ""


def test_skip_push_reuses_the_record(fake, tmp_path):
    record().write(tmp_path / "rec.json")

    report = deployer(fake, tmp_path, FakeSmoke(), push_fn=never_push, skip_push=True).run()
    assert report.ok and report.deployment_id == NEW


def test_job_summary_is_appended(fake, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier\n")
    monkeypatch.setenv(dp.SUMMARY_ENV, str(summary))
    report = deployer(fake, tmp_path, FakeSmoke()).run()
    dp.write_summaries(report, tmp_path / "out" / "report.json")
    text = summary.read_text()
    assert text.startswith("# earlier\n") and "✅ Deploy `orpheus_tts_truss` (tts)" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["ok"] is True


def test_kind_inference():
    assert dp.infer_kind(Path("whisper_streaming_truss")) == "stt"
    assert dp.infer_kind(Path("orpheus_tts_truss")) == "tts"
    with pytest.raises(dp.ConfigError, match="--kind"):
        dp.infer_kind(Path("mystery"))


async def test_cli_end_to_end_with_fake_truss_fake_api_and_a_speaking_socket(fake, tmp_path):
    """The real CLI: stand-in truss -> fake REST API -> WebSocket smoke tests -> promotion."""
    paths: list[str] = []

    async def speak(ws: ServerConnection) -> None:
        paths.append(ws.request.path)
        await ws.recv()
        while await ws.recv() != END_OF_INPUT:
            pass
        await ws.send(b"\x00\x01" * SAMPLE_RATE_HZ * 2)
        await ws.close()

    async with serve(speak, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BASETEN_", "FAKE_TRUSS"))}
        env.update(
            BASETEN_API_KEY="k",
            BASETEN_API_URL=fake.url,
            FAKE_TRUSS_MODEL_ID=MODEL,
            FAKE_TRUSS_DEPLOYMENT_ID=NEW,
            FAKE_TRUSS_HOST=f"http://127.0.0.1:{port}",
            GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "scripts" / "deploy" / "deploy.py"),
            "orpheus_tts_truss",
            "--record",
            str(tmp_path / "rec.json"),
            "--poll-interval",
            "0",
            "--summary-json",
            str(tmp_path / "report.json"),
            cwd=ROOT,
            env={**env, "TRUSS_BIN": str(FAKE_TRUSS)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    stdout = out.decode()
    assert proc.returncode == 0, stdout + err.decode()
    assert f"DEPLOYED orpheus_tts_truss: production serves {NEW}" in stdout
    assert paths == [f"/deployment/{NEW}/websocket", "/environments/production/websocket"]
    assert fake.production(MODEL).current == NEW
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 16  # from autoscaling.yaml
    assert (tmp_path / "summary.md").read_text().count("| pass |") == 7
    assert json.loads((tmp_path / "report.json").read_text())["smoke"]["production"]["ok"]


@pytest.mark.e2e
async def test_e2e_deploy_whisper_through_a_gateway_to_the_real_truss(whisper_server, tmp_path):
    """deploy.py end to end: the stand-in truss push, the fake management API, and smoke tests
    through a Baseten-like gateway (Api-Key auth, 503 while loading) to the real whisper truss."""
    with FakeBaseten(api_key="k") as api:
        api.add_deployment(MODEL, OLD)
        api.add_deployment(MODEL, NEW, ["BUILDING", "ACTIVE"])
        api.set_production(MODEL, OLD)
        async with FakeInferenceGateway(
            whisper_server.ws_url, "k", loading_handshakes=1
        ) as gateway:
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("BASETEN_", "FAKE_TRUSS"))
            }
            env.update(
                BASETEN_API_KEY="k", BASETEN_API_URL=api.url, FAKE_TRUSS_MODEL_ID=MODEL,
                FAKE_TRUSS_DEPLOYMENT_ID=NEW, FAKE_TRUSS_HOST=gateway.http_base,
                TRUSS_BIN=str(FAKE_TRUSS),
            )  # fmt: skip
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "scripts" / "deploy" / "deploy.py"), "whisper_streaming_truss",
                "--record", str(tmp_path / "rec.json"), "--poll-interval", "0", "--fast-smoke",
                "--summary-json", str(tmp_path / "report.json"),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, out.decode() + err.decode()
        assert api.production(MODEL).current == NEW
    report = json.loads((tmp_path / "report.json").read_text())
    for where in ("deployment", "production"):
        assert report["smoke"][where]["metrics"]["wer"] <= st.DEFAULT_MAX_WER
    assert report["smoke"]["deployment"]["metrics"]["handshake_attempts"] == 2  # 503, then 101
    assert gateway.handshakes == [
        (f"/deployment/{NEW}/websocket", 503),
        (f"/deployment/{NEW}/websocket", 101),
        ("/environments/production/websocket", 101),
    ]
