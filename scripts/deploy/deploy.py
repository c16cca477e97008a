#!/usr/bin/env python3
"""Deploy a truss to Baseten as a measurement: production only gets a candidate within its SLO.

    python scripts/deploy/deploy.py TRUSS_DIR [--config config_http.yaml] [--require-hf-token]

The steps are Deployer.run's. The candidate is pushed without truss's --wait (it gives up at the
first UNHEALTHY, while Baseten restarts replicas still starting: the wait here lasts a cold build
plus the config's startup_threshold_seconds), then smoke- and load-tested (TRUSS_DIR/slo.yaml) on
its own URL before any promotion; production keeps the previous deployment warm until production
passed its own smoke test, else it is promoted back. A model's first deployment is made production
by Baseten on push: it is tested on its own URL like any other, and deactivated when it fails.
A JSON report is always written (deploy-report-<truss>[-<config>].json) and appended to
$GITHUB_STEP_SUMMARY when set. Needs BASETEN_API_KEY; BASETEN_API_URL points the REST calls
elsewhere (tests use a local fake).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.deploy import baseten_api as api
from scripts.deploy import loadtest, smoke_test
from scripts.deploy import promote as promote_mod
from scripts.deploy import push as push_mod

KIND_BY_TRUSS = {"whisper_streaming_truss": "stt", "orpheus_tts_truss": "tts"}  # over WebSocket
# A cold build of a ~200-package CUDA image (uv install, layer push) plus getting a GPU node;
# the model's own start-up (weights, load, warm-up) is bounded by its startup_threshold_seconds.
BUILD_TIMEOUT_S = 75 * 60.0
STARTUP_THRESHOLD_S = 1800.0  # truss's default health_checks.startup_threshold_seconds
LOADTEST_TIMEOUT_S = 20 * 60.0  # the CI budget for one load test (slo.yaml keeps it shorter)
PROMOTE_CMD = "python scripts/deploy/promote.py --model-id {} --deployment-id {}"
log = functools.partial(print, file=sys.stderr)


def active_timeout_s(config: dict[str, Any]) -> float:
    checks = (config.get("runtime") or {}).get("health_checks") or {}
    return BUILD_TIMEOUT_S + float(checks.get("startup_threshold_seconds", STARTUP_THRESHOLD_S))


def worst_case_s(config: dict[str, Any]) -> float:
    """Every step at its deadline, rollback included: the CI job's timeout must exceed it."""
    tests = 2 * smoke_test.WORST_CASE_S + LOADTEST_TIMEOUT_S
    promotions = 2 * promote_mod.PROMOTION_TIMEOUT_S + promote_mod.SETTINGS_TIMEOUT_S  # + rollback
    return push_mod.UPLOAD_TIMEOUT_S + active_timeout_s(config) + tests + promotions


@dataclass
class DeployReport:
    truss_dir: str
    config: str
    protocol: str
    ok: bool = False
    first_deployment: bool = False
    deployment: push_mod.DeploymentRecord | None = None
    previous_production_id: str | None = None
    production_deployment_id: str | None = None
    rolled_back: bool = False
    steps: list[dict[str, Any]] = field(default_factory=list)  # name, ok, detail, seconds
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_steps: str = ""

    def markdown(self) -> str:
        mark = "✅" if self.ok else "❌"
        lines = [f"### {mark} Deploy `{self.truss_dir}` `{self.config}` ({self.protocol})", ""]
        if d := self.deployment:
            first = " — the model's first deployment" * self.first_deployment
            ids = f"`{d.deployment_id}` (`{d.deployment_name}`) of `{d.model_id}`"
            lines.append(f"- deployment: {ids}{first}")
        was = f"`{self.production_deployment_id}` (was `{self.previous_production_id}`)"
        lines.append(f"- production: {was}" + " — rolled back" * self.rolled_back)
        lines += ["", "| step | result | seconds | detail |", "| --- | --- | --- | --- |"]
        for s in self.steps:
            result = "pass" if s["ok"] else "FAIL"
            detail = s["detail"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {s['name']} | {result} | {s['seconds']} | {detail} |")
        for where, m in self.measurements.items():
            lines += ["", f"**{where}** ({m['sessions']} sessions): {m['verdict']}", ""]
            lines += ["| metric | value | budget |", "| --- | --- | --- |"]
            split = (key.rpartition("_") + (limit,) for key, limit in m["budgets"].items())
            budgets = {name: f"{bound} {limit}" for name, _, bound, limit in split}
            for name, value in m["metrics"].items():
                if not isinstance(value, dict | list):  # the per-session values: in the JSON
                    lines.append(f"| {name} | {loadtest._fmt(value)} | {budgets.get(name, '')} |")
        return "\n".join(lines + (["", f"**Next:** {self.next_steps}"] * bool(self.next_steps)))


def check_hf_access(config: dict[str, Any], require_token: bool) -> list[str]:
    """Prove $HF_TOKEN reads every gated Hugging Face weight repo of the config: one gated file,
    as Baseten will download the weights with its hf_access_token secret."""
    token, notes = os.environ.get("HF_TOKEN"), []
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    gated = [str(w.get("source")) for w in config.get("weights") or [] if w.get("auth_secret_name")]
    for source in (s.removeprefix("hf://") for s in gated if s.startswith("hf://")):
        repo, _, revision = source.partition("@")
        if not token and require_token:
            raise api.DeployError(f"HF_TOKEN is not set: cannot prove read access to {repo}")
        if not token:
            notes.append(f"WARNING: {repo} access not proven (set HF_TOKEN)")
            continue
        url = f"{endpoint}/{repo}/resolve/{revision or 'main'}/config.json"
        status = httpx.head(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if status.status_code == 401:  # noqa: PLR2004
            raise api.DeployError(f"the Hugging Face token was rejected (HTTP 401) for {repo}")
        if status.status_code >= 400:  # noqa: PLR2004
            raise api.DeployError(
                f"the token cannot read gated {repo} (HTTP {status.status_code}): accept its "
                f"licence at https://huggingface.co/{repo} with the token's account"
            )
        notes.append(f"{repo}@{revision[:10]} readable")
    return notes


class Deployer:
    """The steps, in order; a failing step stops the run, says what to do next, and rolls back or
    retires what it must."""

    def __init__(self, args: argparse.Namespace, client: api.ManagementClient, key: str) -> None:
        self.args, self.client, self.api_key = args, client, key
        self.config = push_mod.truss_config(args.truss_dir, args.config)
        name = args.truss_dir.resolve().name
        transport = ((self.config.get("runtime") or {}).get("transport") or {}).get("kind")
        self.protocol = KIND_BY_TRUSS.get(name, "?") if transport == "websocket" else "http"
        self.slo = loadtest.load_slo(args.truss_dir).get(self.protocol)
        if self.slo is None:  # or a WebSocket truss KIND_BY_TRUSS does not know
            raise api.ConfigError(f"{args.truss_dir}/slo.yaml has no {self.protocol} section")
        auto = args.truss_dir / "autoscaling.yaml"  # checked now, before anything is built
        self.autoscaling = promote_mod.load_autoscaling(auto) if auto.exists() else None
        self.report = DeployReport(name, args.config, self.protocol)
        self.record: push_mod.DeploymentRecord | None = None

    def preflight(self) -> str:
        needed = set(self.config.get("secrets") or {})
        try:
            missing = sorted(needed - self.client.secret_names(os.environ.get("BASETEN_TEAM")))
            secrets = f"secrets present: {', '.join(sorted(needed)) or 'none needed'}"
        except api.BasetenApiError as exc:
            if exc.status_code == 401:  # noqa: PLR2004
                raise api.DeployError(f"the API rejected BASETEN_API_KEY ({exc})") from None
            missing, secrets = [], f"secrets not checked ({exc})"  # a narrower key may deploy
        if missing:
            raise api.DeployError(
                f"Baseten secret(s) missing: {', '.join(missing)}",
                "create them in Baseten (Settings > Secrets; hf_access_token: a Hugging Face "
                "token that can read the gated weights), then re-run",
            )
        notes = [f"API key accepted; {secrets}"]
        notes += check_hf_access(self.config, self.args.require_hf_token)
        r = self.report
        model_id = self.client.model_ids().get(self.config.get("model_name"))
        production = promote_mod.current_id(self.client.production(model_id) if model_id else None)
        r.first_deployment, r.previous_production_id = model_id is None, production
        r.production_deployment_id = production
        first = "; first deployment of this model" if r.first_deployment else ""
        return "; ".join(notes) + (first or f"; production is {production}")

    def push(self) -> str:
        if self.args.skip_push:  # resume: the deployment of the last push
            path = push_mod.record_path(self.args.truss_dir, self.args.config)
            self.record = push_mod.DeploymentRecord.read(path)
        else:
            self.record = push_mod.push(self.args.truss_dir, self.api_key, self.args.config)
        rec = self.report.deployment = self.record
        return f"deployment {rec.deployment_id} ({rec.deployment_name}) of model {rec.model_id}"

    def wait_active(self) -> str:
        rec, seen = self.record, []

        def ready() -> str | None:
            status = str(self.client.deployment(rec.model_id, rec.deployment_id).get("status"))
            if status not in seen[-1:]:
                seen.append(status)
                log(f"   status {status}")
            if status in api.FAILED_STATUSES:
                message = f"deployment {rec.deployment_id} of model {rec.model_id} is {status}"
                raise api.DeployError(message, f"read the logs ({rec.logs_url}), fix, re-run")
            return status if status in api.READY_STATUSES else None

        timeout_s = active_timeout_s(self.config)
        try:
            status = self.client.poll(ready, timeout_s, f"not ready in {timeout_s:.0f} s")
        except api.WaitTimeoutError as exc:
            raise api.DeployError(
                str(exc),
                f"deployment {rec.deployment_id} is STILL {seen[-1] if seen else 'pending'} at "
                f"Baseten (not stopped; logs: {rec.logs_url}). Resume with --skip-push, or "
                "deactivate it in the Baseten UI.",
            ) from None
        unhealthy = " (waited out UNHEALTHY)" if "UNHEALTHY" in seen else ""
        return f"{status} after {' -> '.join(seen)}{unhealthy}"

    def measure(self, label: str, spec: dict[str, Any], production: bool = False) -> str:
        url = self.record.url(self.protocol, production)
        m = loadtest.measure(self.protocol, url, self.api_key, spec)
        self.report.measurements[label] = m.as_dict()
        if not m.ok:
            raise api.DeployError(m.verdict, f"read the deployment's logs ({self.record.logs_url})")
        return m.verdict

    def promote(self) -> str:
        try:
            result = promote_mod.promote(
                self.client,
                self.record.model_id,
                self.record.deployment_id,
                autoscaling=self.autoscaling,
                keep_previous=True,  # warm until production passed its smoke test
            )
        except api.DeployError as exc:
            raise api.DeployError(
                str(exc),
                f"production should still serve {self.report.previous_production_id}; retry: "
                f"{self.promote_cmd(self.record.deployment_id)}",
            ) from None
        production = self.report.production_deployment_id = result["production_deployment_id"]
        how = "promoted" if result["promoted"] else "already production (first deployment)"
        return f"{how}: production serves {production}, own instance type"

    def previous(self) -> str | None:
        previous = self.report.previous_production_id
        return previous if previous != self.record.deployment_id else None

    def promote_cmd(self, deployment_id: str | None) -> str:
        return PROMOTE_CMD.format(self.record.model_id, deployment_id)

    def release_previous(self) -> str:
        if (previous := self.previous()) is None:
            return "no previous production deployment"
        path = f"/v1/models/{self.record.model_id}/deployments/{previous}/autoscaling_settings"
        try:
            self.client.call("PATCH", path, {"min_replica": 0})
        except api.BasetenApiError as exc:
            return f"WARNING: could not let {previous} scale down ({exc}): set min replicas to 0"
        return f"{previous} may scale down now (min_replica 0)"

    def after_failure(self, step: str) -> str:
        """Roll production back, retire a failed first deployment, or say what production runs."""
        if self.record is None:
            return ""
        if step == "smoke production":
            if (previous := self.previous()) is None:
                return "no previous production deployment to roll back to: fix and re-deploy"
            try:
                promote_mod.promote(self.client, self.record.model_id, previous)
            except api.DeployError as exc:
                return f"automatic rollback failed ({exc}); by hand: {self.promote_cmd(previous)}"
            self.report.rolled_back, self.report.production_deployment_id = True, previous
            return f"production was rolled back to {previous} (it was kept warm)"
        if not self.report.first_deployment:
            return f"production still serves {self.report.previous_production_id}"
        # A failed first deployment is the new model's production: it must serve nothing.
        dep = f"first deployment {self.record.deployment_id}"
        path = f"/v1/models/{self.record.model_id}/deployments/{self.record.deployment_id}"
        try:
            self.client.call("POST", f"{path}/deactivate")
        except api.BasetenApiError as exc:
            return f"{dep}: WARNING: could not deactivate it ({exc}): do so in the Baseten UI"
        return f"{dep} was deactivated, so the new model's production serves nothing untested"

    def run(self) -> DeployReport:
        smoke = smoke_test.SMOKE[self.protocol]
        steps = [
            ("preflight", self.preflight),
            ("push", self.push),
            ("wait ACTIVE", self.wait_active),
            ("smoke deployment", lambda: self.measure("smoke deployment", smoke)),
            ("load test deployment", lambda: self.measure("load test deployment", self.slo)),
            ("promote", self.promote),
            ("smoke production", lambda: self.measure("smoke production", smoke, True)),
            ("release previous", self.release_previous),
        ]
        for name, step in steps:
            log(f"== {name}")
            start, failure = time.monotonic(), None
            try:
                detail = step()
            except (api.DeployError, api.ConfigError, OSError) as exc:
                detail, failure = str(exc), exc
            ok, seconds = not failure, round(time.monotonic() - start, 1)
            self.report.steps.append({"name": name, "ok": ok, "detail": detail, "seconds": seconds})
            log(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
            if not ok:
                after = [getattr(failure, "next_steps", ""), self.after_failure(name)]
                self.report.next_steps = ". ".join(filter(None, after))
                return self.report
        self.report.ok = True
        if previous := self.previous():
            self.report.next_steps = f"to roll back: {self.promote_cmd(previous)}"
        return self.report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("--config", default=push_mod.DEFAULT_CONFIG, help="e.g. config_http.yaml")
    parser.add_argument("--skip-push", action="store_true", help="resume: wait for the last push")
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--require-hf-token", action="store_true", help="fail without $HF_TOKEN")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        key = api.api_key_from_env()
        with api.ManagementClient(key, poll_interval_s=args.poll_interval) as client:
            report = Deployer(args, client, key).run()
    except api.ConfigError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    report_path = push_mod.record_path(args.truss_dir, args.config, "deploy-report")
    report_path.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(report.markdown() + "\n")
    verdict = "DEPLOYED" if report.ok else "NOT DEPLOYED"
    print(f"{verdict} {report.truss_dir}: production serves {report.production_deployment_id}")
    print(f"next: {report.next_steps}" * bool(report.next_steps))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
