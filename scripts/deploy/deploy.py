#!/usr/bin/env python3
"""Deploy a truss to Baseten so that production never receives a build that does not speak.

    python scripts/deploy/deploy.py TRUSS_DIR [--kind stt|tts] [--autoscaling FILE] [--summary-json FILE]

Steps: preflight (the API key works, the truss's Baseten secrets exist) -> push (scripts/deploy/push.py)
-> wait until the deployment is ACTIVE -> smoke-test the deployment's own WebSocket URL -> promote
it to production with the truss's autoscaling.yaml (scripts/deploy/promote.py) -> smoke-test production. A failing step stops the run and prints what to do
next; before the promotion, production is untouched. If production fails its smoke test after the
promotion, the previous production deployment is promoted back (unless --no-rollback).
Needs BASETEN_API_KEY; BASETEN_API_URL points the REST calls elsewhere (tests use a local fake).
A GitHub job summary is appended to $GITHUB_STEP_SUMMARY when that variable is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scripts.deploy import promote as promote_mod
from scripts.deploy import push as push_mod
from scripts.deploy import smoke_test
from scripts.deploy.baseten_api import (
    BasetenApiError,
    ConfigError,
    DeploymentFailedError,
    ManagementClient,
    WaitTimeoutError,
    api_base_url,
    api_key_from_env,
)

logger = logging.getLogger("deploy")

KIND_BY_TRUSS = {"whisper_streaming_truss": "stt", "orpheus_tts_truss": "tts"}
DEFAULT_ACTIVE_TIMEOUT_S = 45 * 60.0  # image build + weights download + model load on a cold GPU
DEFAULT_ACTIVE_POLL_S = 10.0
HTTP_UNAUTHORIZED = 401
# What the previous production deployment may scale down to once the new one is proven.
RELEASED_MIN_REPLICA = 0
SUMMARY_ENV = "GITHUB_STEP_SUMMARY"

PushFn = Callable[..., push_mod.DeploymentRecord]
SmokeFn = Callable[[smoke_test.SmokeOptions], smoke_test.SmokeResult]

# What a promotion (or the rollback's promotion) can fail with.
PROMOTION_ERRORS = (
    promote_mod.PromotionError,
    BasetenApiError,
    DeploymentFailedError,
    WaitTimeoutError,
)


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class DeployReport:
    truss_dir: str
    kind: str
    ok: bool = False
    model_id: str | None = None
    deployment_id: str | None = None
    deployment_name: str | None = None
    previous_production_id: str | None = None
    production_deployment_id: str | None = None
    rolled_back: bool = False
    steps: list[Step] = field(default_factory=list)
    smoke: dict[str, dict[str, Any]] = field(default_factory=dict)
    next_steps: str = ""

    def markdown(self) -> str:
        """A GitHub job summary: ids, step table, smoke verdicts, next steps."""
        icon = "✅" if self.ok else "❌"
        lines = [
            f"### {icon} Deploy `{self.truss_dir}` ({self.kind})",
            "",
            f"- model: `{self.model_id}`",
            f"- deployment: `{self.deployment_id}` (`{self.deployment_name}`)",
            f"- previous production: `{self.previous_production_id}`",
            f"- production now: `{self.production_deployment_id}`"
            + (" (rolled back)" if self.rolled_back else ""),
            "",
            "| step | result | seconds | detail |",
            "| --- | --- | --- | --- |",
        ]
        for step in self.steps:
            detail = step.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {step.name} | {'pass' if step.ok else 'FAIL'} | {step.seconds:.1f} | {detail} |"
            )
        if self.next_steps:
            lines += ["", f"**Next:** {self.next_steps}"]
        return "\n".join(lines) + "\n"


class StepFailed(RuntimeError):
    """A deploy step failed; ``next_steps`` tells the operator what to do."""

    def __init__(self, detail: str, next_steps: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.next_steps = next_steps


@dataclass(frozen=True)
class DeployOptions:
    truss_dir: Path
    kind: str
    autoscaling: promote_mod.AutoscalingSettings | None
    record_path: Path
    api_key: str
    skip_push: bool = False
    rollback: bool = True
    active_timeout_s: float = DEFAULT_ACTIVE_TIMEOUT_S
    poll_interval_s: float = DEFAULT_ACTIVE_POLL_S
    promotion_timeout_s: float = promote_mod.DEFAULT_PROMOTION_TIMEOUT_S
    smoke_connect_budget_s: float = smoke_test.DEFAULT_CONNECT_BUDGET_S
    smoke_timeout_s: float | None = None
    smoke_fast: bool = False  # STT audio as fast as possible instead of at real-time pace
    team: str | None = None  # Baseten team (accounts with several): its secrets are checked
    push_timeout_s: float = push_mod.DEFAULT_WAIT_TIMEOUT_S

    def smoke_worst_case_s(self) -> float:
        """One smoke test at most: connect budget (503s while waking) + the test's own timeout."""
        return self.smoke_connect_budget_s + (
            self.smoke_timeout_s or smoke_test.default_timeout_s(self.kind)
        )

    def worst_case_s(self) -> float:
        """Every step at its deadline, a failed production smoke test and the rollback included:
        the CI job's timeout must exceed this, or CI kills a deploy halfway through a promotion."""
        promotion = self.promotion_timeout_s + promote_mod.DEFAULT_SETTINGS_TIMEOUT_S
        return (
            self.push_timeout_s
            + self.active_timeout_s
            + 2 * self.smoke_worst_case_s()  # the deployment, then production
            + promotion
            + self.promotion_timeout_s  # the rollback's promotion
        )


def infer_kind(truss_dir: Path) -> str:
    """stt or tts from the truss folder's name."""
    name = truss_dir.resolve().name
    if name in KIND_BY_TRUSS:
        return KIND_BY_TRUSS[name]
    if "whisper" in name or "stt" in name:
        return "stt"
    if "orpheus" in name or "tts" in name:
        return "tts"
    raise ConfigError(f"cannot tell whether {name} is stt or tts: pass --kind")


class Deployer:
    """Runs the steps in order; each one either passes or raises StepFailed."""

    def __init__(
        self,
        options: DeployOptions,
        client: ManagementClient,
        *,
        push_fn: PushFn = push_mod.push,
        smoke_fn: SmokeFn = smoke_test.run,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] = logger.info,
    ) -> None:
        self.opts = options
        self.client = client
        self.push_fn = push_fn
        self.smoke_fn = smoke_fn
        self.sleep = sleep
        self.log = log
        self.report = DeployReport(truss_dir=options.truss_dir.name, kind=options.kind)
        self.record: push_mod.DeploymentRecord | None = None
        self.promoted = False

    def _step(self, name: str, fn: Callable[[], str]) -> None:
        self.log(f"== {name}")
        start = time.monotonic()
        try:
            detail = fn()
        except StepFailed as exc:
            self.report.steps.append(Step(name, False, exc.detail, time.monotonic() - start))
            self.log(f"FAIL {name}: {exc.detail}")
            raise
        self.report.steps.append(Step(name, True, detail, time.monotonic() - start))
        self.log(f"ok   {name}: {detail}")

    # --- steps ------------------------------------------------------------------------------

    def preflight(self) -> str:
        """Fail in seconds, not after a long build: the key works and the truss's secrets exist."""
        try:
            needed = set((push_mod.truss_config(self.opts.truss_dir).get("secrets") or {}).keys())
        except ConfigError as exc:
            raise StepFailed(str(exc), "pass a truss folder (with config.yaml)") from None
        try:
            names = self.client.list_secret_names(team=self.opts.team)
        except ConfigError as exc:  # the team is unknown to this key
            raise StepFailed(
                str(exc), "production is untouched. Set BASETEN_TEAM to one of those teams."
            ) from None
        except BasetenApiError as exc:
            if exc.status_code == HTTP_UNAUTHORIZED:
                raise StepFailed(
                    f"the management API rejected BASETEN_API_KEY ({exc})",
                    "production is untouched. Set BASETEN_API_KEY to a valid workspace API key.",
                ) from None
            # A key without permission to list secrets can still deploy: warn, do not block.
            return f"secrets not checked ({exc})"
        missing = sorted(needed - names)
        if missing:
            raise StepFailed(
                f"Baseten secret(s) missing: {', '.join(missing)}",
                "production is untouched. Create them in Baseten (Settings > Secrets); "
                "hf_access_token is a Hugging Face token that can read the gated weights. "
                "Then re-run.",
            )
        scope = f"team {self.opts.team}" if self.opts.team else "workspace"
        present = ", ".join(sorted(needed)) or "none needed"
        return f"API key accepted; {scope} secrets present: {present}"

    def push(self) -> str:
        if self.opts.skip_push:
            try:
                record = push_mod.DeploymentRecord.read(self.opts.record_path)
            except (OSError, ValueError, TypeError) as exc:
                raise StepFailed(
                    f"cannot read {self.opts.record_path}: {exc}",
                    "run without --skip-push to push a new deployment",
                ) from None
        else:
            try:
                record = self.push_fn(self.opts.truss_dir, api_key=self.opts.api_key)
            except (push_mod.PushError, ConfigError, OSError) as exc:
                raise StepFailed(
                    str(exc),
                    "production is untouched. Fix the build (truss output above; check that "
                    "BASETEN_API_KEY is valid and that required secrets exist in Baseten), then "
                    "re-run.",
                ) from None
            record.write(self.opts.record_path)
        self.record = record
        self.report.model_id = record.model_id
        self.report.deployment_id = record.deployment_id
        self.report.deployment_name = record.deployment_name
        return f"deployment {record.deployment_id} ({record.deployment_name}) of model {record.model_id}"

    def wait_active(self) -> str:
        record = self._record()
        try:
            deployment = self.client.wait_for_deployment(
                record.model_id,
                record.deployment_id,
                timeout_s=self.opts.active_timeout_s,
                poll_interval_s=self.opts.poll_interval_s,
                on_status=lambda s: self.log(f"   deployment status {s}"),
            )
        except (DeploymentFailedError, WaitTimeoutError, BasetenApiError) as exc:
            raise StepFailed(
                str(exc),
                f"production is untouched. Read the deployment's logs ({record.logs_url}), fix, "
                "and re-run; deactivate the failed deployment in the Baseten UI if it lingers.",
            ) from None
        env = promote_mod.get_production(self.client, record.model_id)
        current = (env or {}).get("current_deployment") or {}
        self.report.previous_production_id = current.get("id")
        self.report.production_deployment_id = current.get("id")
        return f"status {deployment.get('status')}; production is {current.get('id')}"

    def _smoke(self, label: str, url: str, next_steps: str) -> str:
        options = smoke_test.SmokeOptions(
            kind=self.opts.kind,
            url=url,
            api_key=self.opts.api_key,
            timeout_s=self.opts.smoke_timeout_s,
            connect_budget_s=self.opts.smoke_connect_budget_s,
            fast=self.opts.smoke_fast,
        )
        result = self.smoke_fn(options)
        self.report.smoke[label] = asdict(result)
        if not result.ok:
            raise StepFailed(result.verdict, next_steps)
        return result.verdict

    def smoke_deployment(self) -> str:
        record = self._record()
        if self.report.previous_production_id == record.deployment_id:
            untouched = (
                "Baseten made this deployment production on its own (the first deployment of a "
                "new model): production is broken. Fix and re-run, or deactivate it."
            )
        else:
            untouched = "production is untouched."
        return self._smoke(
            "deployment",
            record.deployment_ws_url,
            f"{untouched} Deployment {record.deployment_id} failed its smoke test: read its "
            f"logs ({record.logs_url}), fix, re-run.",
        )

    def promote(self) -> str:
        record = self._record()
        previous = self.report.previous_production_id
        try:
            result = promote_mod.promote(
                self.client,
                record.model_id,
                record.deployment_id,
                autoscaling=self.opts.autoscaling,
                # The previous deployment stays warm until the new one passed its production
                # smoke test: a rollback must not wait for a GPU cold start (Orpheus: up to 30 min).
                scale_down_previous=False,
                timeout_s=self.opts.promotion_timeout_s,
                poll_interval_s=self.opts.poll_interval_s,
                sleep=self.sleep,
                log=lambda line: self.log(f"   {line}"),
            )
        except PROMOTION_ERRORS as exc:
            raise StepFailed(
                str(exc),
                f"check the model's production environment in the Baseten UI; it should still "
                f"serve {previous}. To retry: python scripts/deploy/promote.py --model-id "
                f"{record.model_id} --deployment-id {record.deployment_id}",
            ) from None
        self.promoted = result.promoted
        self.report.production_deployment_id = result.production_deployment_id
        settings = f"; autoscaling {result.autoscaling_status}" if result.autoscaling else ""
        return f"production serves {result.production_deployment_id} (was {previous}){settings}"

    def smoke_production(self) -> str:
        record = self._record()
        return self._smoke("production", record.production_ws_url, "")

    def _previous(self) -> str | None:
        """The production deployment before this deploy, if it is another one."""
        previous = self.report.previous_production_id
        return previous if previous and previous != self._record().deployment_id else None

    def release_previous(self) -> str:
        """Production passed its smoke test: let the previous deployment scale down (it was kept
        warm for a rollback). It keeps its weights and image: promote.py can bring it back."""
        record = self._record()
        previous = self._previous()
        if previous is None:
            return "no previous production deployment"
        try:
            self.client.update_deployment_autoscaling(
                record.model_id, previous, {"min_replica": RELEASED_MIN_REPLICA}
            )
        except BasetenApiError as exc:
            # Production is proven; only the old deployment's cost is at stake: say so, pass.
            return (
                f"WARNING: could not let {previous} scale down ({exc}); set its min replicas "
                "to 0 in the Baseten UI (it stays warm and costs GPU time until then)"
            )
        return f"{previous} may scale down now (min_replica {RELEASED_MIN_REPLICA})"

    def rollback(self) -> str:
        """Promote the previous production deployment back; return what happened."""
        record = self._record()
        previous = self.report.previous_production_id
        manual = f"python scripts/deploy/promote.py --model-id {record.model_id} --deployment-id {previous}"
        if not previous or previous == record.deployment_id:
            return "no previous production deployment to roll back to: fix and re-deploy."
        if not self.opts.rollback:
            return f"production serves the failing deployment; roll back with: {manual}"
        self.log(f"== rollback to {previous}")
        try:
            promote_mod.promote(
                self.client,
                record.model_id,
                previous,
                scale_down_previous=True,  # the failing deployment: no reason to keep it warm
                timeout_s=self.opts.promotion_timeout_s,
                poll_interval_s=self.opts.poll_interval_s,
                sleep=self.sleep,
                log=lambda line: self.log(f"   {line}"),
            )
        except PROMOTION_ERRORS as exc:
            return f"automatic rollback failed ({exc}); roll back by hand: {manual}"
        self.report.rolled_back = True
        self.report.production_deployment_id = previous
        return (
            f"production was rolled back to {previous}. Investigate deployment "
            f"{record.deployment_id} (logs: {record.logs_url})."
        )

    def _record(self) -> push_mod.DeploymentRecord:
        assert self.record is not None, "push step did not run"
        return self.record

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> DeployReport:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("preflight", self.preflight),
            ("push", self.push),
            ("wait ACTIVE", self.wait_active),
            ("smoke deployment", self.smoke_deployment),
            ("promote", self.promote),
            ("smoke production", self.smoke_production),
            ("release previous", self.release_previous),
        ]
        for name, fn in steps:
            try:
                self._step(name, fn)
            except StepFailed as exc:
                self.report.next_steps = exc.next_steps
                if name == "smoke production":
                    self.report.next_steps = self.rollback()
                return self.report
        self.report.ok = True
        record = self._record()
        self.report.next_steps = (
            f"to roll back: python scripts/deploy/promote.py --model-id {record.model_id} "
            f"--deployment-id {self.report.previous_production_id}"
            if self.report.previous_production_id
            and self.report.previous_production_id != record.deployment_id
            else ""
        )
        return self.report


def write_summaries(report: DeployReport, summary_json: Path | None) -> None:
    if summary_json:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if path := os.environ.get(SUMMARY_ENV):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(report.markdown())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("truss_dir", type=Path)
    parser.add_argument("--kind", choices=["stt", "tts"], help="default: from the truss name")
    parser.add_argument(
        "--autoscaling", type=Path, help="default: TRUSS_DIR/autoscaling.yaml (if present)"
    )
    parser.add_argument("--record", type=Path, help="deployment record (deployment-<truss>.json)")
    parser.add_argument("--skip-push", action="store_true", help="reuse the deployment in --record")
    parser.add_argument("--no-rollback", action="store_true", help="never promote back")
    parser.add_argument("--summary-json", type=Path, help="write the report as JSON here")
    parser.add_argument("--active-timeout", type=float, default=DEFAULT_ACTIVE_TIMEOUT_S)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_ACTIVE_POLL_S)
    parser.add_argument(
        "--smoke-connect-budget", type=float, default=smoke_test.DEFAULT_CONNECT_BUDGET_S
    )
    parser.add_argument("--smoke-timeout", type=float)
    parser.add_argument(
        "--fast-smoke", action="store_true", help="STT smoke audio as fast as possible"
    )
    parser.add_argument("--team", help=f"Baseten team (default: ${push_mod.TEAM_ENV})")
    return parser


def options_from_args(args: argparse.Namespace) -> DeployOptions:
    truss_dir: Path = args.truss_dir
    if not (truss_dir / "config.yaml").exists():
        raise ConfigError(f"{truss_dir} is not a truss (no config.yaml)")
    autoscaling_path = args.autoscaling or truss_dir / "autoscaling.yaml"
    autoscaling = (
        promote_mod.AutoscalingSettings.from_yaml(autoscaling_path)
        if args.autoscaling or autoscaling_path.exists()
        else None
    )
    return DeployOptions(
        truss_dir=truss_dir,
        kind=args.kind or infer_kind(truss_dir),
        autoscaling=autoscaling,
        record_path=args.record or push_mod.default_record_path(truss_dir),
        api_key=api_key_from_env(),
        skip_push=args.skip_push,
        rollback=not args.no_rollback,
        active_timeout_s=args.active_timeout,
        poll_interval_s=args.poll_interval,
        smoke_connect_budget_s=args.smoke_connect_budget,
        smoke_timeout_s=args.smoke_timeout,
        smoke_fast=args.fast_smoke,
        team=args.team or os.environ.get(push_mod.TEAM_ENV) or None,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    with ManagementClient(options.api_key, api_base_url()) as client:
        report = Deployer(options, client).run()
    write_summaries(report, args.summary_json)
    for step in report.steps:
        print(f"{'PASS' if step.ok else 'FAIL'} {step.name}: {step.detail}")
    verdict = "DEPLOYED" if report.ok else "NOT DEPLOYED"
    print(f"{verdict} {report.truss_dir}: production serves {report.production_deployment_id}")
    if report.next_steps:
        print(f"next: {report.next_steps}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
