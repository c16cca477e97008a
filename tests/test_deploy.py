"""scripts/deploy/deploy.py: every step and failure path against the local fake Baseten API; end to
end with the stand-in truss CLI, and with the real local servers standing in for the candidate."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import SAMPLE_RATE_HZ
from scripts.deploy import deploy as dp
from scripts.deploy import push as ps
from scripts.deploy.baseten_api import ManagementClient
from scripts.deploy.loadtest import Measurement
from tests.fake_baseten import FakeBaseten, FakeInferenceGateway

ROOT = Path(__file__).resolve().parent.parent
FAKE_TRUSS = ROOT / "tests" / "fixtures" / "fake_truss_cli" / "truss"
MODEL, OLD, NEW = "mdl", "old1", "new2"
HOST = "model-mdl.api.baseten.co"


def record(deployment_id: str = NEW, host: str = f"https://{HOST}") -> ps.DeploymentRecord:
    predict_url = f"{host}/deployment/{deployment_id}/predict"
    return ps.DeploymentRecord("orpheus-tts", MODEL, deployment_id, "abc123", predict_url, "logs")


class FakeMeasure:
    """Measurements by label; records (protocol, url, sessions) it was asked for."""

    def __init__(self, fail: str = ""):
        self.fail, self.calls = fail, []

    def __call__(self, protocol, url, api_key, spec) -> Measurement:
        assert api_key == "k"
        sessions = int(spec.get("sessions", 1))
        where = "production" if "/environments/production/" in url else "deployment"
        label = f"{'load' if sessions > 1 else 'smoke'} {where}"
        self.calls.append((protocol, url, sessions))
        m = Measurement(protocol, url, sessions, {"errors": 0}, {"errors_max": 0})
        if label == self.fail:
            m.metrics["errors"], m.violations = 1, ["errors 1 > max 0"]
        return m


@pytest.fixture
def fake():
    with FakeBaseten(api_key="k") as server:
        server.models = {MODEL: "orpheus-tts-websocket", "mh": "orpheus-tts-http"}
        server.add_deployment(MODEL, OLD)
        server.add_deployment(MODEL, NEW, ["BUILDING", "LOADING_MODEL", "ACTIVE"])
        server.set_production(MODEL, OLD)
        yield server


@pytest.fixture
def deploy(fake, tmp_path, monkeypatch):
    """deploy.py's steps on orpheus_tts_truss (its slo.yaml, autoscaling.yaml) against the fake
    API, with a stand-in push and measurements; ``deploy(*argv, measure=, push=)``."""
    monkeypatch.chdir(tmp_path)  # the record lands here
    for name in ("HF_TOKEN", "HF_ENDPOINT", "BASETEN_TEAM"):
        monkeypatch.delenv(name, raising=False)

    def run(*argv, measure=None, push=lambda truss_dir, key, config: record()):
        monkeypatch.setattr(dp.push_mod, "push", push)
        monkeypatch.setattr(dp.loadtest, "measure", measure or FakeMeasure())
        args = dp.parse_args([str(ROOT / "orpheus_tts_truss"), *argv])
        with ManagementClient("k", fake.url, poll_interval_s=0) as client:
            return dp.Deployer(args, client, "k").run()

    return run


def never(*args, **kwargs):
    raise AssertionError("must not push")


def steps(report: dp.DeployReport) -> list[tuple[str, bool]]:
    return [(s["name"], s["ok"]) for s in report.steps]


ALL = ["preflight", "push", "wait ACTIVE", "smoke deployment", "load test deployment", "promote",
       "smoke production", "release previous"]  # fmt: skip


def test_happy_path_measures_the_candidate_before_promoting_it(fake, deploy):
    measure = FakeMeasure()
    report = deploy(measure=measure)
    assert report.ok and steps(report) == [(name, True) for name in ALL]
    assert measure.calls == [
        ("tts", f"wss://{HOST}/deployment/{NEW}/websocket", 1),
        ("tts", f"wss://{HOST}/deployment/{NEW}/websocket", 8),  # slo.yaml, the candidate's URL
        ("tts", f"wss://{HOST}/environments/production/websocket", 1),
    ]
    assert fake.production(MODEL).current == NEW
    ((_, _, body),) = fake.calls("POST", "/promote")
    assert body["deployment_id"] == NEW
    assert body["preserve_env_instance_type"] is False  # instance type from `resources`
    assert body["scale_down_previous_deployment"] is False  # warm until production is proven
    assert fake.deployments[(MODEL, OLD)].autoscaling["min_replica"] == 0  # then released
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 16  # autoscaling.yaml
    assert set(report.measurements) == {
        "smoke deployment",
        "load test deployment",
        "smoke production",
    }
    md = report.markdown()
    assert "| load test deployment | pass |" in md and "| errors | 0 | max 0 |" in md
    assert f"promote.py --model-id {MODEL} --deployment-id {OLD}" in report.next_steps


def test_unhealthy_is_waited_out_until_active(fake, deploy):
    fake.add_deployment(MODEL, NEW, ["BUILDING", "UNHEALTHY", "UNHEALTHY", "ACTIVE"])
    report = deploy()
    assert report.ok and "waited out UNHEALTHY" in report.steps[2]["detail"]
    assert "BUILDING -> UNHEALTHY -> ACTIVE" in report.steps[2]["detail"]


def test_failed_build_stops_the_wait(fake, deploy):
    fake.add_deployment(MODEL, NEW, ["BUILDING", "BUILD_FAILED"])
    report = deploy()
    assert steps(report)[-1] == ("wait ACTIVE", False)
    assert "is BUILD_FAILED" in report.steps[-1]["detail"] and "read the logs" in report.next_steps
    assert fake.calls("POST") == []


def test_wait_timeout_reports_the_still_building_deployment_and_resumes(fake, deploy, monkeypatch):
    fake.add_deployment(MODEL, NEW, ["BUILDING"])
    monkeypatch.setattr(dp, "BUILD_TIMEOUT_S", -1e9)
    report = deploy()
    assert steps(report)[-1] == ("wait ACTIVE", False)
    assert f"deployment {NEW} is STILL BUILDING" in report.next_steps
    assert f"production still serves {OLD}" in report.next_steps and fake.calls("POST") == []
    # --skip-push resumes with the last push's record once the build is done.
    Path("deployment-orpheus_tts_truss.json").write_text(json.dumps(asdict(record())))
    fake.add_deployment(MODEL, NEW, ["ACTIVE"])
    monkeypatch.setattr(dp, "BUILD_TIMEOUT_S", 60.0)
    report = deploy("--skip-push", push=never)
    assert report.ok and report.deployment.deployment_id == NEW


def test_active_timeout_fits_a_cold_build_plus_the_configs_startup_threshold():
    for truss in dp.KIND_BY_TRUSS:
        config = ps.truss_config(ROOT / truss)
        startup = config["runtime"]["health_checks"]["startup_threshold_seconds"]
        assert dp.active_timeout_s(config) == dp.BUILD_TIMEOUT_S + startup
    assert dp.BUILD_TIMEOUT_S >= 60 * 60


def test_candidate_over_budget_is_never_promoted(fake, deploy):
    report = deploy(measure=FakeMeasure(fail="load deployment"))
    assert steps(report)[-1] == ("load test deployment", False)
    assert "errors 1 > max 0" in report.steps[-1]["detail"]
    assert fake.calls("POST") == [] and fake.production(MODEL).current == OLD
    assert f"production still serves {OLD}" in report.next_steps
    assert report.measurements["load test deployment"]["ok"] is False


def test_production_smoke_failure_rolls_back_to_the_warm_previous(fake, deploy):
    report = deploy(measure=FakeMeasure(fail="smoke production"))
    assert steps(report)[-1] == ("smoke production", False)
    assert report.rolled_back and fake.production(MODEL).current == OLD
    assert fake.deployments[(MODEL, OLD)].status == "ACTIVE"  # it was never scaled down
    assert [body["deployment_id"] for _, _, body in fake.calls("POST", "/promote")] == [NEW, OLD]
    assert "rolled back" in report.markdown()


def test_first_deployment_is_tested_on_its_own_url_and_retired_on_failure(fake, deploy):
    fake.models = {}  # the model does not exist before the push
    fake.environments.clear()
    report = deploy(measure=FakeMeasure(fail="load deployment"))
    assert report.first_deployment and "first deployment" in report.steps[0]["detail"]
    assert "deactivated" in report.next_steps
    assert fake.deployments[(MODEL, NEW)].status == "INACTIVE"
    # Baseten made it production itself: a passing first deployment is not promoted again.
    fake.add_deployment(MODEL, NEW)
    fake.set_production(MODEL, NEW)
    report = deploy()
    assert report.ok and report.first_deployment and fake.calls("POST", "/promote") == []
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 16


def test_missing_secret_unknown_team_and_rejected_key_stop_before_the_build(
    fake, deploy, monkeypatch
):
    fake.secrets = {"other"}
    report = deploy(push=never)
    assert steps(report) == [("preflight", False)]
    assert "hf_access_token" in report.steps[0]["detail"]
    monkeypatch.setenv("BASETEN_TEAM", "Nope")
    report = deploy(push=never)
    assert (
        steps(report) == [("preflight", False)] and "set BASETEN_TEAM" in report.steps[0]["detail"]
    )
    monkeypatch.delenv("BASETEN_TEAM")
    fake.inject(401, path_contains="/v1/secrets")
    report = deploy(push=never)
    assert "rejected BASETEN_API_KEY" in report.steps[0]["detail"]


class FakeHub:
    """The Hub's model API and file resolver: 200 for the good token, 403 on the gated file."""

    def __init__(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                hub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                token = self.headers.get("Authorization")
                status = 401 if token not in ("Bearer good", "Bearer no-licence") else 200
                if "/resolve/" in self.path and token == "Bearer no-licence":
                    status = 403
                body = json.dumps({"id": "canopylabs/orpheus-3b-0.1-ft", "gated": "manual"})
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body.encode())

            do_GET = do_HEAD = _answer

        self.requests = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_hf_preflight_proves_read_access_to_the_gated_repo(fake, deploy, monkeypatch):
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        monkeypatch.setenv("HF_TOKEN", "good")
        report = deploy()
        assert report.ok
        assert "canopylabs/orpheus-3b-0.1-ft@6fc2550cf2 readable" in report.steps[0]["detail"]
        revision = "6fc2550cf2e7236861b920e91769a4f93fd23283"
        gated_file = f"/canopylabs/orpheus-3b-0.1-ft/resolve/{revision}/config.json"
        assert hub.requests == [("HEAD", gated_file, "Bearer good")]
        for token, message in [("no-licence", "cannot read gated"), ("bad", "rejected (HTTP 401)")]:
            monkeypatch.setenv("HF_TOKEN", token)
            report = deploy(push=never)
            assert steps(report) == [("preflight", False)] and message in report.steps[0]["detail"]
    finally:
        hub.server.shutdown()
    monkeypatch.delenv("HF_TOKEN")
    report = deploy("--require-hf-token", push=never)
    assert steps(report) == [("preflight", False)]
    assert "HF_TOKEN is not set" in report.steps[0]["detail"]
    report = deploy()  # without a token: deploys, with a warning
    assert report.ok and "WARNING" in report.steps[0]["detail"]


def test_http_flavour_is_measured_on_predict_urls(fake, deploy):
    measure = FakeMeasure()
    report = deploy("--config", "config_http.yaml", measure=measure)
    assert report.ok and report.protocol == "http" and report.config == "config_http.yaml"
    assert [url for _, url, _ in measure.calls] == [
        f"https://{HOST}/deployment/{NEW}/predict",
        f"https://{HOST}/deployment/{NEW}/predict",
        f"https://{HOST}/environments/production/predict",
    ]


def test_checked_in_slo_files_cover_every_protocol():
    from scripts.deploy.loadtest import load_slo

    assert set(load_slo(ROOT / "whisper_streaming_truss")) == {"stt"}
    assert set(load_slo(ROOT / "orpheus_tts_truss")) == {"tts", "http"}
    for slo in (load_slo(ROOT / t) for t in dp.KIND_BY_TRUSS):
        for spec in slo.values():
            assert spec["sessions"] > 1 and spec["budgets"]["errors_max"] == 0


async def test_cli_end_to_end_with_fake_truss_fake_api_and_a_speaking_socket(fake, tmp_path):
    """The real CLI: stand-in truss push (no --wait) -> fake REST API (UNHEALTHY waited out) ->
    smoke and load test (orpheus_tts_truss/slo.yaml) -> promotion -> report and job summary."""
    fake.add_deployment(MODEL, NEW, ["BUILDING", "UNHEALTHY", "ACTIVE"])
    paths: list[str] = []

    async def speak(ws: ServerConnection) -> None:  # 0.2 s of audio for every word
        paths.append(ws.request.path)
        await ws.recv()
        while await ws.recv() != END_OF_INPUT:
            await ws.send(b"\x00\x01" * (SAMPLE_RATE_HZ // 5))
        await ws.close()

    async with serve(speak, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BASETEN_", "FAKE_TRUSS", "HF_"))
        }
        env.update(
            BASETEN_API_KEY="k", BASETEN_API_URL=fake.url, FAKE_TRUSS_MODEL_ID=MODEL,
            FAKE_TRUSS_DEPLOYMENT_ID=NEW, FAKE_TRUSS_HOST=f"http://127.0.0.1:{port}",
            GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"), TRUSS_BIN=str(FAKE_TRUSS),
        )  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "scripts" / "deploy" / "deploy.py"), str(ROOT / "orpheus_tts_truss"),
            "--poll-interval", "0",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, out.decode() + err.decode()
    assert f"DEPLOYED orpheus_tts_truss: production serves {NEW}" in out.decode()
    assert paths.count(f"/deployment/{NEW}/websocket") == 1 + 8  # smoke + slo.yaml's sessions
    assert paths[-1] == "/environments/production/websocket"
    report = json.loads((tmp_path / "deploy-report-orpheus_tts_truss.json").read_text())
    assert report["ok"] and report["measurements"]["load test deployment"]["metrics"]["errors"] == 0
    assert "ttfa_s_p95" in report["measurements"]["load test deployment"]["metrics"]
    assert (tmp_path / "summary.md").read_text().count("| pass |") == len(ALL)
    record = ps.DeploymentRecord.read(tmp_path / "deployment-orpheus_tts_truss.json")
    assert record.deployment_id == NEW and report["deployment"]["deployment_id"] == NEW


@pytest.mark.e2e
async def test_e2e_whisper_candidate_is_load_tested_with_real_speech(
    whisper_server, tmp_path, monkeypatch
):
    """The pipeline with the real whisper truss behind a Baseten-like gateway (Api-Key, 503 while
    loading): push, wait, smoke, a load test of real speech against budgets, promotion."""
    monkeypatch.chdir(tmp_path)
    slo = {"stt": {"sessions": 2, "files": ["real/LJ001-0008", "real/LJ001-0002"],
                   "budgets": {"wer_max": 0.5, "final_latency_s_p95_max": 10.0, "errors_max": 0}}}  # fmt: skip
    monkeypatch.setattr(dp.loadtest, "load_slo", lambda truss_dir: slo)
    with FakeBaseten(api_key="k") as api:
        api.models = {MODEL: "whisper-streaming"}
        api.add_deployment(MODEL, OLD)
        api.add_deployment(MODEL, NEW, ["BUILDING", "UNHEALTHY", "ACTIVE"])
        api.set_production(MODEL, OLD)
        async with FakeInferenceGateway(whisper_server.ws_url, "k", loading_handshakes=1) as gw:
            gateway = record(NEW, f"http://{gw.host}:{gw.port}")
            monkeypatch.setattr(dp.push_mod, "push", lambda *args: gateway)
            args = dp.parse_args([str(ROOT / "whisper_streaming_truss")])
            with ManagementClient("k", api.url, poll_interval_s=0) as client:
                report = await asyncio.to_thread(dp.Deployer(args, client, "k").run)
        assert report.ok, report.steps
        assert api.production(MODEL).current == NEW
    load = report.measurements["load test deployment"]
    assert load["metrics"]["wer"] <= 0.5 and load["metrics"]["final_latency_s_p95"] is not None
    assert len(load["metrics"]["final_latency_s_values"]) >= 2
    assert (f"/deployment/{NEW}/websocket", 503) in gw.handshakes
