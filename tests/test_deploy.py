"""scripts/deploy/deploy.py: every step and failure path against the local fake Baseten API; end to
end with the stand-in truss CLI, and with the real local servers standing in for the candidate."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import SAMPLE_RATE_HZ
from scripts.deploy import deploy as dp
from scripts.deploy import push as ps
from scripts.deploy.baseten_api import ManagementClient, deployment_ws_url, environment_ws_url
from scripts.deploy.loadtest import Measurement
from scripts.deploy.promote import AutoscalingSettings
from tests.fake_baseten import FakeBaseten, FakeInferenceGateway

ROOT = Path(__file__).resolve().parent.parent
FAKE_TRUSS = ROOT / "tests" / "fixtures" / "fake_truss_cli" / "truss"
MODEL, OLD, NEW = "mdl", "old1", "new2"
BASE = "wss://model-mdl.api.baseten.co"
SETTINGS = AutoscalingSettings(min_replica=1, max_replica=2, concurrency_target=16)
SLO = {"tts": {"sessions": 2, "budgets": {"errors_max": 0}}}


def record(deployment_id: str = NEW, host: str = BASE) -> ps.DeploymentRecord:
    http = host.replace("wss://", "https://").replace("ws://", "http://")
    return ps.DeploymentRecord(
        truss_dir="orpheus_tts_truss", model_name="orpheus-tts", model_id=MODEL,
        deployment_id=deployment_id, deployment_name="abc123",
        predict_url=f"{http}/deployment/{deployment_id}/predict", logs_url="https://logs",
        deployment_ws_url=deployment_ws_url(host, deployment_id),
        production_ws_url=environment_ws_url(host),
    )  # fmt: skip


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


def deployer(fake, tmp_path, measure=None, push_fn=None, **opts) -> dp.Deployer:
    opts.setdefault("slo", SLO)
    options = dp.DeployOptions(
        truss_dir=ROOT / "orpheus_tts_truss", kind="tts", autoscaling=SETTINGS,
        record_path=tmp_path / "rec.json", api_key="k", poll_interval_s=0, **opts,
    )  # fmt: skip
    client = ManagementClient("k", fake.url, sleep=lambda s: None)
    return dp.Deployer(
        options, client, push_fn=push_fn or (lambda d, api_key, config: record()),
        measure_fn=measure or FakeMeasure(), sleep=lambda s: None, log=lambda line: None,
    )  # fmt: skip


def steps(report: dp.DeployReport) -> list[tuple[str, bool]]:
    return [(s.name, s.ok) for s in report.steps]


ALL = ["preflight", "push", "wait ACTIVE", "smoke deployment", "load test deployment", "promote",
       "smoke production", "release previous"]  # fmt: skip


def test_happy_path_measures_the_candidate_before_promoting_it(fake, tmp_path):
    measure = FakeMeasure()
    report = deployer(fake, tmp_path, measure).run()
    assert report.ok and steps(report) == [(name, True) for name in ALL]
    assert measure.calls == [
        ("tts", deployment_ws_url(BASE, NEW), 1),
        ("tts", deployment_ws_url(BASE, NEW), 2),  # the load test, on the candidate's own URL
        ("tts", environment_ws_url(BASE), 1),
    ]
    assert fake.production(MODEL).current == NEW
    ((_, _, body),) = fake.calls("POST", "/promote")
    assert body["preserve_env_instance_type"] is False  # instance type from `resources`
    assert body["scale_down_previous_production"] is False  # warm until production is proven
    assert fake.deployments[(MODEL, OLD)].autoscaling["min_replica"] == 0  # then released
    assert set(report.measurements) == {
        "smoke deployment",
        "load test deployment",
        "smoke production",
    }
    md = report.markdown()
    assert "| load test deployment | pass |" in md and "| errors | 0 | max 0 |" in md


def test_unhealthy_is_waited_out_until_active(fake, tmp_path):
    fake.add_deployment(MODEL, NEW, ["BUILDING", "UNHEALTHY", "UNHEALTHY", "ACTIVE"])
    report = deployer(fake, tmp_path).run()
    assert report.ok and "waited out UNHEALTHY" in report.steps[2].detail


def test_wait_timeout_reports_the_still_building_deployment(fake, tmp_path):
    fake.add_deployment(MODEL, NEW, ["BUILDING"])
    report = deployer(fake, tmp_path, build_timeout_s=-1e9).run()
    assert steps(report)[-1] == ("wait ACTIVE", False)
    assert f"deployment {NEW} is STILL BUILDING" in report.next_steps
    assert "untouched" not in report.next_steps and fake.calls("POST") == []


def test_active_timeout_fits_a_cold_build_plus_the_configs_startup_threshold():
    for truss in dp.KIND_BY_TRUSS:
        options = dp.DeployOptions(ROOT / truss, "stt", None, Path("r.json"), "k")
        startup = options.truss_config()["runtime"]["health_checks"]["startup_threshold_seconds"]
        assert options.active_timeout_s() == dp.DEFAULT_BUILD_TIMEOUT_S + startup
    assert dp.DEFAULT_BUILD_TIMEOUT_S >= 60 * 60


def test_candidate_over_budget_is_never_promoted(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeMeasure(fail="load deployment")).run()
    assert steps(report)[-1] == ("load test deployment", False)
    assert "errors 1 > max 0" in report.steps[-1].detail
    assert fake.calls("POST") == [] and fake.production(MODEL).current == OLD
    assert f"production still serves {OLD}" in report.next_steps
    assert report.measurements["load test deployment"]["ok"] is False


def test_production_smoke_failure_rolls_back_to_the_warm_previous(fake, tmp_path):
    report = deployer(fake, tmp_path, FakeMeasure(fail="smoke production")).run()
    assert steps(report)[-1] == ("smoke production", False)
    assert report.rolled_back and fake.production(MODEL).current == OLD
    assert fake.deployments[(MODEL, OLD)].status == "ACTIVE"  # it was never scaled down
    assert [p for _, p, _ in fake.calls("POST")] == [
        f"/v1/models/{MODEL}/deployments/{NEW}/promote",
        f"/v1/models/{MODEL}/deployments/{OLD}/promote",
    ]


def test_first_deployment_is_tested_on_its_own_url_and_retired_on_failure(fake, tmp_path):
    fake.models = {}  # the model does not exist before the push
    fake.environments.clear()
    report = deployer(fake, tmp_path, FakeMeasure(fail="load deployment")).run()
    assert report.first_deployment and "first deployment" in report.steps[0].detail
    assert "deactivated" in report.next_steps
    assert fake.deployments[(MODEL, NEW)].status == "INACTIVE"
    # Baseten made it production itself: a passing first deployment is not promoted again.
    fake.add_deployment(MODEL, NEW)
    fake.set_production(MODEL, NEW)
    report = deployer(fake, tmp_path).run()
    assert report.ok and report.first_deployment and fake.calls("POST", "/promote") == []
    assert fake.production(MODEL).autoscaling["concurrency_target"] == 16


def test_missing_secret_and_rejected_key_stop_before_the_build(fake, tmp_path):
    def never(*a, **k):
        raise AssertionError("must not push")

    fake.secrets = {"other"}
    report = deployer(fake, tmp_path, push_fn=never).run()
    assert steps(report) == [("preflight", False)] and "hf_access_token" in report.steps[0].detail
    fake.inject(401, path_contains="/v1/secrets")
    report = deployer(fake, tmp_path, push_fn=never).run()
    assert "rejected BASETEN_API_KEY" in report.steps[0].detail


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


def test_hf_preflight_proves_read_access_to_the_gated_repo(fake, tmp_path):
    hub = FakeHub()
    try:
        report = deployer(fake, tmp_path, hf_token="good", hf_endpoint=hub.url).run()
        assert (
            report.ok
            and "canopylabs/orpheus-3b-0.1-ft@6fc2550cf2 readable" in report.steps[0].detail
        )
        paths = [(m, p.split("@")[0]) for m, p, _ in hub.requests]
        assert (
            "GET",
            "/api/models/canopylabs/orpheus-3b-0.1-ft/revision/6fc2550cf2e7236861b920e91769a4f93fd23283",
        ) in paths
        assert all(auth == "Bearer good" for *_, auth in hub.requests)
        for token, message in [("no-licence", "cannot read gated"), ("bad", "rejected (HTTP 401)")]:
            report = deployer(fake, tmp_path, hf_token=token, hf_endpoint=hub.url).run()
            assert steps(report) == [("preflight", False)] and message in report.steps[0].detail
    finally:
        hub.server.shutdown()
    report = deployer(fake, tmp_path, require_hf_token=True).run()
    assert (
        steps(report) == [("preflight", False)] and "HF_TOKEN is not set" in report.steps[0].detail
    )
    report = deployer(fake, tmp_path).run()  # without a token: deploys, with a warning
    assert report.ok and "WARNING" in report.steps[0].detail


def test_http_flavour_is_measured_on_predict_urls(fake, tmp_path):
    measure = FakeMeasure()
    slo = {"http": {"sessions": 2, "budgets": {"errors_max": 0}}}
    report = deployer(fake, tmp_path, measure, config="config_http.yaml", slo=slo).run()
    assert report.ok and report.protocol == "http" and report.config == "config_http.yaml"
    urls = [url for _, url, _ in measure.calls]
    assert urls == [f"https://model-{MODEL}.api.baseten.co/deployment/{NEW}/predict"] * 2 + [
        f"https://model-{MODEL}.api.baseten.co/environments/production/predict"
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
            "--record", str(tmp_path / "rec.json"), "--poll-interval", "0",
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


@pytest.mark.e2e
async def test_e2e_whisper_candidate_is_load_tested_with_real_speech(whisper_server, tmp_path):
    """The pipeline with the real whisper truss behind a Baseten-like gateway (Api-Key, 503 while
    loading): push, wait, smoke, a load test of real speech against budgets, promotion."""
    with FakeBaseten(api_key="k") as api:
        api.models = {MODEL: "whisper-streaming"}
        api.add_deployment(MODEL, OLD)
        api.add_deployment(MODEL, NEW, ["BUILDING", "UNHEALTHY", "ACTIVE"])
        api.set_production(MODEL, OLD)
        async with FakeInferenceGateway(whisper_server.ws_url, "k", loading_handshakes=1) as gw:
            slo = {"stt": {"sessions": 2, "files": ["real/LJ001-0001", "real/LJ001-0002"],
                           "budgets": {"wer_max": 0.5, "final_latency_s_p95_max": 10.0,
                                       "errors_max": 0}}}  # fmt: skip
            options = dp.DeployOptions(
                ROOT / "whisper_streaming_truss", "stt", None, tmp_path / "rec.json", "k",
                poll_interval_s=0, slo=slo,
            )  # fmt: skip
            client = ManagementClient("k", api.url, sleep=lambda s: None)
            runner = dp.Deployer(options, client, push_fn=lambda *a, **k: record(NEW, f"ws://{gw.host}:{gw.port}"),
                                 log=lambda line: None)  # fmt: skip
            report = await asyncio.to_thread(runner.run)
        assert report.ok, report.steps
        assert api.production(MODEL).current == NEW
    load = report.measurements["load test deployment"]
    assert load["metrics"]["wer"] <= 0.5 and load["metrics"]["final_latency_s_p95"] is not None
    assert len(load["metrics"]["final_latency_s_values"]) >= 2
    assert (f"/deployment/{NEW}/websocket", 503) in gw.handshakes
