#!/usr/bin/env python3
"""Deploy a truss to Baseten as a measurement: production only gets a candidate within its SLO.

    python scripts/deploy/deploy.py TRUSS_DIR [--config config_http.yaml] [--summary-json FILE]

preflight (API key, Baseten secrets, Hugging Face read access to gated weights with $HF_TOKEN,
first deployment?) -> push (push.py: truss push without --wait) -> wait ACTIVE (UNHEALTHY waited
out until build budget + the config's startup_threshold_seconds) -> smoke test and load test
(loadtest.py, budgets in TRUSS_DIR/slo.yaml) on the deployment's own URL -> promote with the
deployment's own instance type and TRUSS_DIR/autoscaling.yaml, the previous production kept warm
-> smoke test production (failure: promote the previous one back) -> let the previous scale down.
A model's first deployment is made production by Baseten on push: it is tested on its own URL
like any other, and deactivated when it fails. A JSON report is always written (``--summary-json``,
default deploy-report-<truss>[-<config>].json) and appended to $GITHUB_STEP_SUMMARY when set.
Needs BASETEN_API_KEY; BASETEN_API_URL points the REST calls elsewhere (tests use a local fake).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scripts.deploy import loadtest, smoke_test
from scripts.deploy import promote as promote_mod
from scripts.deploy import push as push_mod
from scripts.deploy.baseten_api import (
    BasetenApiError,
    ConfigError,
    DeploymentFailedError,
    ManagementClient,
    WaitTimeoutError,
    api_base_url,
    api_key_from_env,
)

KIND_BY_TRUSS = {"whisper_streaming_truss": "stt", "orpheus_tts_truss": "tts"}
# A cold build of a ~200-package CUDA image (uv install, layer push) plus getting a GPU node;
# the model's own start-up (weights, load, warm-up) is bounded by its startup_threshold_seconds.
DEFAULT_BUILD_TIMEOUT_S = 75 * 60.0
DEFAULT_STARTUP_THRESHOLD_S = 1800.0  # truss's default health_checks.startup_threshold_seconds
LOADTEST_TIMEOUT_S = 20 * 60.0  # the CI budget for one load test (slo.yaml keeps it shorter)
HF_TOKEN_ENV, HF_ENDPOINT_ENV = "HF_TOKEN", "HF_ENDPOINT"
PROMOTION_ERRORS = (promote_mod.PromotionError, *promote_mod.ERRORS)


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class DeployReport:
    truss_dir: str
    config: str
    protocol: str
    ok: bool = False
    first_deployment: bool = False
    model_id: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    previous_production_id: str | None = None
    production_deployment_id: str | None = None
    rolled_back: bool = False
    steps: list[Step] = field(default_factory=list)
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_steps: str = ""

    def markdown(self) -> str:
        lines = [
            f"### {'✅' if self.ok else '❌'} Deploy `{self.truss_dir}` `{self.config}` "
            f"({self.protocol})",
            "",
            f"- deployment: `{self.deployment_id}` (`{self.deployment_name}`) of `{self.model_id}`"
            + (" — the model's first deployment" if self.first_deployment else ""),
            f"- production: `{self.production_deployment_id}` (was "
            f"`{self.previous_production_id}`){' — rolled back' if self.rolled_back else ''}",
            "",
            "| step | result | seconds | detail |",
            "| --- | --- | --- | --- |",
        ]
        for s in self.steps:
            detail = s.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {s.name} | {'pass' if s.ok else 'FAIL'} | {s.seconds:.1f} | {detail} |"
            )
        for where, m in self.measurements.items():
            lines += ["", f"**{where}** ({m['sessions']} sessions): {m['verdict']}", ""]
            lines += ["| metric | value | budget |", "| --- | --- | --- |"]
            budgets = {k.rpartition("_")[0]: k for k in m["budgets"]}
            for name, value in m["metrics"].items():
                if not isinstance(value, dict | list):
                    limit = budgets.get(name)
                    shown = f"{limit.rpartition('_')[2]} {m['budgets'][limit]}" if limit else ""
                    lines.append(f"| {name} | {loadtest._fmt(value)} | {shown} |")
        return "\n".join(lines + (["", f"**Next:** {self.next_steps}"] * bool(self.next_steps)))


class StepFailed(RuntimeError):
    def __init__(self, detail: str, next_steps: str = "") -> None:
        super().__init__(detail)
        self.detail, self.next_steps = detail, next_steps


@dataclass(frozen=True)
class DeployOptions:
    truss_dir: Path
    kind: str  # stt / tts; the protocol is "http" for a config without a websocket transport
    autoscaling: promote_mod.AutoscalingSettings | None
    record_path: Path
    api_key: str
    config: str = push_mod.DEFAULT_CONFIG
    skip_push: bool = False
    rollback: bool = True
    build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S
    poll_interval_s: float = 10.0
    promotion_timeout_s: float = promote_mod.DEFAULT_PROMOTION_TIMEOUT_S
    team: str | None = None
    require_hf_token: bool = False
    hf_token: str | None = None
    hf_endpoint: str = "https://huggingface.co"
    slo: dict[str, Any] | None = None  # default: TRUSS_DIR/slo.yaml

    def truss_config(self) -> dict[str, Any]:
        return push_mod.truss_config(self.truss_dir, self.config)

    @property
    def protocol(self) -> str:
        transport = ((self.truss_config().get("runtime") or {}).get("transport") or {}).get("kind")
        return self.kind if transport == "websocket" else "http"

    def active_timeout_s(self) -> float:
        checks = (self.truss_config().get("runtime") or {}).get("health_checks") or {}
        startup = checks.get("startup_threshold_seconds", DEFAULT_STARTUP_THRESHOLD_S)
        return self.build_timeout_s + float(startup)

    def worst_case_s(self) -> float:
        """Every step at its deadline, rollback included: the CI job's timeout must exceed it."""
        return (
            push_mod.UPLOAD_TIMEOUT_S
            + self.active_timeout_s()
            + 2 * smoke_test.WORST_CASE_S
            + LOADTEST_TIMEOUT_S
            + 2 * self.promotion_timeout_s  # the promotion, then the rollback's
            + promote_mod.DEFAULT_SETTINGS_TIMEOUT_S
        )


def infer_kind(truss_dir: Path) -> str:
    name = truss_dir.resolve().name
    for key, kind in [*KIND_BY_TRUSS.items(), ("whisper", "stt"), ("stt", "stt"), ("tts", "tts")]:
        if key in name:
            return kind
    raise ConfigError(f"cannot tell whether {name} is stt or tts: pass --kind")


def gated_repos(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(repo, revision) of every Hugging Face weight source that needs a token."""
    out = []
    for weight in config.get("weights") or []:
        source = str(weight.get("source", ""))
        if weight.get("auth_secret_name") and source.startswith("hf://"):
            repo, _, revision = source.removeprefix("hf://").partition("@")
            out.append((repo, revision or "main"))
    return out


def check_hf_access(repo: str, revision: str, token: str, endpoint: str) -> str:
    """Prove the token reads the gated repo: the Hub's model API, then one gated file."""
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=endpoint.rstrip("/"), headers=headers, timeout=30) as hub:
        info = hub.get(f"/api/models/{repo}/revision/{revision}")
        if info.status_code == 401:  # noqa: PLR2004
            raise StepFailed(f"the Hugging Face token was rejected (HTTP 401) for {repo}")
        if info.status_code != 200:  # noqa: PLR2004
            raise StepFailed(f"{repo}@{revision}: Hub model API answered HTTP {info.status_code}")
        config = hub.head(f"/{repo}/resolve/{revision}/config.json")
        if config.status_code >= 400:  # noqa: PLR2004
            raise StepFailed(
                f"the token cannot read gated {repo} (HTTP {config.status_code}): accept its "
                f"licence at https://huggingface.co/{repo} with the token's account"
            )
    return f"{repo}@{revision[:10]} readable ({info.json().get('gated') or 'not'} gated)"


class Deployer:
    def __init__(
        self,
        options: DeployOptions,
        client: ManagementClient,
        *,
        push_fn: Callable[..., push_mod.DeploymentRecord] = push_mod.push,
        measure_fn: Callable[..., loadtest.Measurement] = loadtest.measure,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> None:
        self.opts, self.client, self.push_fn, self.measure_fn = options, client, push_fn, measure_fn
        self.sleep, self.log = sleep, log
        self.protocol = options.protocol
        self.report = DeployReport(options.truss_dir.name, options.config, self.protocol)
        self.record: push_mod.DeploymentRecord | None = None

    @property
    def rec(self) -> push_mod.DeploymentRecord:
        assert self.record is not None, "push step did not run"
        return self.record

    def preflight(self) -> str:
        config = self.opts.truss_config()
        needed = set(config.get("secrets") or {})
        try:
            names = self.client.list_secret_names(team=self.opts.team)
            missing = sorted(needed - names)
            secrets = f"secrets present: {', '.join(sorted(needed)) or 'none needed'}"
        except ConfigError as exc:
            raise StepFailed(str(exc), "set BASETEN_TEAM to one of those teams") from None
        except BasetenApiError as exc:
            if exc.status_code == 401:  # noqa: PLR2004
                raise StepFailed(f"the API rejected BASETEN_API_KEY ({exc})") from None
            missing, secrets = [], f"secrets not checked ({exc})"  # a narrower key may deploy
        if missing:
            raise StepFailed(
                f"Baseten secret(s) missing: {', '.join(missing)}",
                "create them in Baseten (Settings > Secrets; hf_access_token: a Hugging Face "
                "token that can read the gated weights), then re-run",
            )
        hub = []
        for repo, revision in gated_repos(config):
            if self.opts.hf_token:
                hub.append(
                    check_hf_access(repo, revision, self.opts.hf_token, self.opts.hf_endpoint)
                )
            elif self.opts.require_hf_token:
                raise StepFailed(f"{HF_TOKEN_ENV} is not set: cannot prove read access to {repo}")
            else:
                hub.append(f"WARNING: {repo} access not proven (set {HF_TOKEN_ENV})")
        name = config.get("model_name")
        try:
            self.report.first_deployment = not any(
                m.get("name") == name for m in self.client.list_models()
            )
        except BasetenApiError as exc:
            hub.append(f"models not listed ({exc})")
        first = "; first deployment of this model" if self.report.first_deployment else ""
        return "; ".join([f"API key accepted; {secrets}", *hub]) + first

    def push(self) -> str:
        if self.opts.skip_push:
            try:
                self.record = push_mod.DeploymentRecord.read(self.opts.record_path)
            except (OSError, ValueError, TypeError) as exc:
                raise StepFailed(f"cannot read {self.opts.record_path}: {exc}") from None
        else:
            try:
                self.record = self.push_fn(
                    self.opts.truss_dir, api_key=self.opts.api_key, config=self.opts.config
                )
            except (push_mod.PushError, ConfigError, OSError) as exc:
                raise StepFailed(str(exc), "fix the push (truss output above), re-run") from None
            self.record.write(self.opts.record_path)
        r = self.report
        r.model_id, r.deployment_id, r.deployment_name = (
            self.rec.model_id,
            self.rec.deployment_id,
            self.rec.deployment_name,
        )
        return f"deployment {r.deployment_id} ({r.deployment_name}) of model {r.model_id}"

    def wait_active(self) -> str:
        timeout = self.opts.active_timeout_s()
        seen: list[str] = []
        try:
            self.client.wait_for_deployment(
                self.rec.model_id,
                self.rec.deployment_id,
                timeout_s=timeout,
                poll_interval_s=self.opts.poll_interval_s,
                on_status=lambda s: (seen.append(s), self.log(f"   status {s}")),
            )
        except WaitTimeoutError as exc:
            raise StepFailed(
                str(exc),
                f"deployment {self.rec.deployment_id} is STILL {seen[-1] if seen else 'pending'} "
                f"at Baseten (not stopped; logs: {self.rec.logs_url}). Resume with --skip-push "
                "--record <record>, or deactivate it in the Baseten UI.",
            ) from None
        except (DeploymentFailedError, BasetenApiError) as exc:
            raise StepFailed(
                str(exc), f"read the logs ({self.rec.logs_url}), fix, re-run"
            ) from None
        env = promote_mod.get_production(self.client, self.rec.model_id)
        current = promote_mod._current(env)
        self.report.previous_production_id = self.report.production_deployment_id = current
        if current == self.rec.deployment_id:
            self.report.first_deployment = True  # Baseten made it production on its own
        unhealthy = " (waited out UNHEALTHY)" if "UNHEALTHY" in seen else ""
        return f"ACTIVE after {' -> '.join(seen)}{unhealthy}; production is {current}"

    def _url(self, production: bool) -> str:
        if self.protocol == "http":
            return self.rec.production_predict_url if production else self.rec.predict_url
        return self.rec.production_ws_url if production else self.rec.deployment_ws_url

    def _measure(self, label: str, spec: dict[str, Any], production: bool = False) -> str:
        m = self.measure_fn(self.protocol, self._url(production), self.opts.api_key, spec)
        self.report.measurements[label] = m.as_dict()
        if not m.ok:
            raise StepFailed(f"{m.verdict}", f"read the deployment's logs ({self.rec.logs_url})")
        return m.verdict

    def smoke_deployment(self) -> str:
        return self._measure("smoke deployment", smoke_test.SMOKE[self.protocol])

    def load_test(self) -> str:
        slo = self.opts.slo if self.opts.slo is not None else loadtest.load_slo(self.opts.truss_dir)
        if self.protocol not in slo:
            raise StepFailed(f"{self.opts.truss_dir}/slo.yaml has no {self.protocol} section")
        return self._measure("load test deployment", slo[self.protocol])

    def promote(self) -> str:
        try:
            result = promote_mod.promote(
                self.client,
                self.rec.model_id,
                self.rec.deployment_id,
                autoscaling=self.opts.autoscaling,
                scale_down_previous=False,  # kept warm until production passed its smoke test
                timeout_s=self.opts.promotion_timeout_s,
                poll_interval_s=self.opts.poll_interval_s,
                sleep=self.sleep,
                log=lambda line: self.log(f"   {line}"),
            )
        except PROMOTION_ERRORS as exc:
            raise StepFailed(
                str(exc),
                f"production should still serve {self.report.previous_production_id}; retry: "
                f"{self._promote_cmd(self.rec.deployment_id)}",
            ) from None
        self.report.production_deployment_id = result.production_deployment_id
        how = "promoted" if result.promoted else "already production (first deployment)"
        return f"{how}: production serves {result.production_deployment_id}, own instance type"

    def smoke_production(self) -> str:
        return self._measure("smoke production", smoke_test.SMOKE[self.protocol], production=True)

    def _previous(self) -> str | None:
        previous = self.report.previous_production_id
        return previous if previous != self.rec.deployment_id else None

    def _promote_cmd(self, deployment_id: str | None) -> str:
        return (
            f"python scripts/deploy/promote.py --model-id {self.rec.model_id} "
            f"--deployment-id {deployment_id}"
        )

    def release_previous(self) -> str:
        previous = self._previous()
        if previous is None:
            return "no previous production deployment"
        try:
            self.client.update_deployment_autoscaling(
                self.rec.model_id, previous, {"min_replica": 0}
            )
        except BasetenApiError as exc:
            return f"WARNING: could not let {previous} scale down ({exc}): set min replicas to 0"
        return f"{previous} may scale down now (min_replica 0)"

    def rollback(self) -> str:
        previous = self._previous()
        if previous is None:
            return "no previous production deployment to roll back to: fix and re-deploy"
        if not self.opts.rollback:
            return f"production serves the failing deployment; roll back: {self._promote_cmd(previous)}"
        try:
            promote_mod.promote(
                self.client,
                self.rec.model_id,
                previous,
                timeout_s=self.opts.promotion_timeout_s,
                poll_interval_s=self.opts.poll_interval_s,
                sleep=self.sleep,
                log=lambda line: self.log(f"   {line}"),
            )
        except PROMOTION_ERRORS as exc:
            return f"automatic rollback failed ({exc}); by hand: {self._promote_cmd(previous)}"
        self.report.rolled_back, self.report.production_deployment_id = True, previous
        return f"production was rolled back to {previous} (it was kept warm)"

    def retire_first(self) -> str:
        """A failed first deployment is the model's production: deactivate it."""
        try:
            self.client.deactivate(self.rec.model_id, self.rec.deployment_id)
        except BasetenApiError as exc:
            return f"WARNING: could not deactivate it ({exc}): do so in the Baseten UI"
        return "it was deactivated, so the new model's production serves nothing untested"

    def run(self) -> DeployReport:
        steps = [
            ("preflight", self.preflight),
            ("push", self.push),
            ("wait ACTIVE", self.wait_active),
            ("smoke deployment", self.smoke_deployment),
            ("load test deployment", self.load_test),
            ("promote", self.promote),
            ("smoke production", self.smoke_production),
            ("release previous", self.release_previous),
        ]
        for name, fn in steps:
            self.log(f"== {name}")
            start = time.monotonic()
            try:
                detail = fn()
            except StepFailed as exc:
                self.report.steps.append(Step(name, False, exc.detail, time.monotonic() - start))
                self.log(f"FAIL {name}: {exc.detail}")
                after = [exc.next_steps] if exc.next_steps else []
                if name == "smoke production":
                    after.append(self.rollback())
                elif self.record and self.report.first_deployment and name != "push":
                    after.append(
                        f"first deployment {self.rec.deployment_id}: {self.retire_first()}"
                    )
                elif self.record and name != "push":
                    after.append(f"production still serves {self.report.previous_production_id}")
                self.report.next_steps = ". ".join(after)
                return self.report
            self.report.steps.append(Step(name, True, detail, time.monotonic() - start))
            self.log(f"ok   {name}: {detail}")
        self.report.ok = True
        if previous := self._previous():
            self.report.next_steps = f"to roll back: {self._promote_cmd(previous)}"
        return self.report


def write_summaries(report: DeployReport, summary_json: Path) -> None:
    summary_json.parent.mkdir(parents=True, exist_ok=True)
    summary_json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if path := os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(report.markdown() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("--config", default=push_mod.DEFAULT_CONFIG, help="e.g. config_http.yaml")
    parser.add_argument("--kind", choices=["stt", "tts"], help="default: from the truss name")
    parser.add_argument("--autoscaling", type=Path, help="default: TRUSS_DIR/autoscaling.yaml")
    parser.add_argument("--record", type=Path, help="deployment record (deployment-<truss>.json)")
    parser.add_argument("--skip-push", action="store_true", help="reuse the deployment in --record")
    parser.add_argument("--no-rollback", action="store_true", help="never promote back")
    parser.add_argument("--summary-json", type=Path, help="default: deploy-report-<truss>.json")
    parser.add_argument("--build-timeout", type=float, default=DEFAULT_BUILD_TIMEOUT_S)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--team", help=f"Baseten team (default: ${push_mod.TEAM_ENV})")
    parser.add_argument(
        "--require-hf-token", action="store_true", help=f"fail without ${HF_TOKEN_ENV}"
    )
    args = parser.parse_args(argv)
    try:
        truss_dir: Path = args.truss_dir
        push_mod.truss_config(truss_dir, args.config)
        auto = args.autoscaling or truss_dir / "autoscaling.yaml"
        options = DeployOptions(
            truss_dir=truss_dir,
            kind=args.kind or infer_kind(truss_dir),
            autoscaling=promote_mod.AutoscalingSettings.from_yaml(auto) if auto.exists() else None,
            record_path=args.record or push_mod.default_record_path(truss_dir, args.config),
            api_key=api_key_from_env(),
            config=args.config,
            skip_push=args.skip_push,
            rollback=not args.no_rollback,
            build_timeout_s=args.build_timeout,
            poll_interval_s=args.poll_interval,
            team=args.team or os.environ.get(push_mod.TEAM_ENV) or None,
            require_hf_token=args.require_hf_token,
            hf_token=os.environ.get(HF_TOKEN_ENV) or None,
            hf_endpoint=os.environ.get(HF_ENDPOINT_ENV) or "https://huggingface.co",
        )
    except ConfigError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    with ManagementClient(options.api_key, api_base_url()) as client:
        report = Deployer(options, client).run()
    name = push_mod.default_record_path(options.truss_dir, options.config).name[11:]
    write_summaries(report, args.summary_json or Path.cwd() / f"deploy-report-{name}")
    for step in report.steps:
        print(f"{'PASS' if step.ok else 'FAIL'} {step.name}: {step.detail}")
    verdict = "DEPLOYED" if report.ok else "NOT DEPLOYED"
    print(f"{verdict} {report.truss_dir}: production serves {report.production_deployment_id}")
    print(f"next: {report.next_steps}" * bool(report.next_steps))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
