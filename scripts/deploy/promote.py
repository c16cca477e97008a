#!/usr/bin/env python3
"""Promote a Baseten deployment to production, wait until production serves it, apply autoscaling.

    python scripts/deploy/promote.py --model-id M --deployment-id D [--autoscaling FILE] [--json]

Uses the management REST API at ``BASETEN_API_URL`` (default https://api.baseten.co) with the key in
``BASETEN_API_KEY``. Exit code 0 when production runs the deployment (and the autoscaling settings
are applied), 1 when a step failed, 2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scripts.deploy.baseten_api import (
    ACTIVE_STATUS,
    AUTOSCALING_FIELDS,
    FAILED_STATUSES,
    PENDING_STATUSES,
    PRODUCTION,
    PROMOTION_FAILED_STATUSES,
    PROMOTION_SUCCEEDED_STATUS,
    RECOVERABLE_STATUSES,
    SCALED_TO_ZERO_STATUS,
    BasetenApiError,
    ConfigError,
    DeploymentFailedError,
    ManagementClient,
    api_base_url,
    api_key_from_env,
)
from scripts.deploy.poll import WaitTimeoutError, poll_until

logger = logging.getLogger("promote")

DEFAULT_PROMOTION_TIMEOUT_S = 30 * 60.0  # a promotion may have to start GPU replicas first
DEFAULT_SETTINGS_TIMEOUT_S = 5 * 60.0  # autoscaling updates are applied asynchronously
DEFAULT_POLL_INTERVAL_S = 10.0
HTTP_NOT_FOUND = 404
PERCENT_MAX = 100


class PromotionError(RuntimeError):
    """Promotion refused, failed or did not finish: production may still run the old deployment."""


@dataclass(frozen=True)
class AutoscalingSettings:
    """The subset of UpdateAutoscalingSettingsV1 a truss checks in (autoscaling.yaml)."""

    min_replica: int
    max_replica: int
    concurrency_target: int
    target_utilization_percentage: int | None = None
    autoscaling_window: int | None = None
    scale_down_delay: int | None = None

    def __post_init__(self) -> None:
        for name in AUTOSCALING_FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"autoscaling {name} must be an integer, got {value!r}")
        if self.min_replica < 0:
            raise ConfigError("autoscaling min_replica must be >= 0")
        if self.max_replica < max(1, self.min_replica):
            raise ConfigError("autoscaling max_replica must be >= 1 and >= min_replica")
        if self.concurrency_target < 1:
            raise ConfigError("autoscaling concurrency_target must be >= 1")
        pct = self.target_utilization_percentage
        if pct is not None and not 1 <= pct <= PERCENT_MAX:
            raise ConfigError("autoscaling target_utilization_percentage must be in 1..100")
        for name in ("autoscaling_window", "scale_down_delay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"autoscaling {name} must be >= 0 seconds")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> AutoscalingSettings:
        unknown = sorted(set(data) - set(AUTOSCALING_FIELDS))
        if unknown:
            raise ConfigError(f"unknown autoscaling settings: {', '.join(unknown)}")
        missing = [k for k in ("min_replica", "max_replica", "concurrency_target") if k not in data]
        if missing:
            raise ConfigError(f"autoscaling settings lack: {', '.join(missing)}")
        return cls(**dict(data))

    @classmethod
    def from_yaml(cls, path: Path) -> AutoscalingSettings:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read autoscaling settings {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of autoscaling settings")
        return cls.from_mapping(data)

    def as_request(self) -> dict[str, int]:
        """The PATCH body's autoscaling_settings: only the fields that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class PromoteResult:
    model_id: str
    deployment_id: str
    production_deployment_id: str
    previous_deployment_id: str | None
    promoted: bool  # False when the deployment already was production
    autoscaling: dict[str, int] | None = None
    autoscaling_status: str | None = None
    events: list[str] = field(default_factory=list)


def _current_id(environment: Mapping[str, Any] | None) -> str | None:
    current = (environment or {}).get("current_deployment") or {}
    return current.get("id")


def _promotion(environment: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return (environment or {}).get("in_progress_promotion")


def _promotion_running(environment: Mapping[str, Any] | None) -> bool:
    promotion = _promotion(environment)
    if not promotion:
        return False
    status = promotion.get("status")
    return status not in PROMOTION_FAILED_STATUSES and status != PROMOTION_SUCCEEDED_STATUS


def get_production(client: ManagementClient, model_id: str) -> dict[str, Any] | None:
    """The production environment, or None while the model has none yet."""
    try:
        return client.get_environment(model_id, PRODUCTION)
    except BasetenApiError as exc:
        if exc.status_code == HTTP_NOT_FOUND:
            return None
        raise


def check_promotable(deployment: Mapping[str, Any]) -> None:
    """Refuse deployments that failed or are still being built."""
    status = str(deployment.get("status"))
    dep_id = str(deployment.get("id"))
    if status in FAILED_STATUSES:
        raise PromotionError(f"deployment {dep_id} is {status}: it cannot serve production")
    if status in PENDING_STATUSES or status in RECOVERABLE_STATUSES:
        raise PromotionError(
            f"deployment {dep_id} is still {status}: wait until it is ACTIVE, smoke-test it, "
            "then promote"
        )
    if status not in (ACTIVE_STATUS, SCALED_TO_ZERO_STATUS):
        raise PromotionError(f"deployment {dep_id} has unexpected status {status}")


def wait_for_production(
    client: ManagementClient,
    model_id: str,
    deployment_id: str,
    *,
    timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = logger.info,
) -> dict[str, Any]:
    """Poll environments/production until its current deployment is ours and no promotion runs."""
    seen: dict[str, Any] = {"state": None}

    def check() -> dict[str, Any] | None:
        env = get_production(client, model_id)
        promotion = _promotion(env)
        state = (_current_id(env), promotion.get("status") if promotion else None)
        if state != seen["state"]:
            pct = promotion.get("percent_traffic_to_new_version") if promotion else None
            log(f"production: current={state[0]} promotion={state[1]} traffic_to_new={pct}")
            seen["state"] = state
        if promotion and promotion.get("status") in PROMOTION_FAILED_STATUSES:
            reason = promotion.get("error_message") or "no reason given"
            raise PromotionError(f"promotion {promotion.get('status')}: {reason}")
        if state[0] == deployment_id and not _promotion_running(env):
            return env or {}
        dep_status = str(client.get_deployment(model_id, deployment_id).get("status"))
        if dep_status in FAILED_STATUSES:
            raise DeploymentFailedError(model_id, deployment_id, dep_status)
        return None

    def timeout_message() -> str:
        current, promotion = seen["state"]
        return f"production still serves {current} (promotion {promotion}) after {timeout_s:.0f} s"

    return poll_until(
        check,
        timeout_s=timeout_s,
        interval_s=poll_interval_s,
        timeout_message=timeout_message,
        sleep=sleep,
        clock=clock,
    )


def settings_applied(environment: Mapping[str, Any] | None, wanted: Mapping[str, int]) -> bool:
    """Whether the environment's autoscaling settings show every wanted value."""
    current = (environment or {}).get("autoscaling_settings") or {}
    return all(current.get(k) == v for k, v in wanted.items())


def apply_autoscaling(
    client: ManagementClient,
    model_id: str,
    settings: AutoscalingSettings,
    *,
    timeout_s: float,
    poll_interval_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """PATCH production's autoscaling settings (they persist across promotions) and wait for them."""
    wanted = settings.as_request()
    answer = client.update_environment_autoscaling(model_id, wanted, PRODUCTION) or {}
    status = str(answer.get("status", "ACCEPTED"))
    return poll_until(
        lambda: status if settings_applied(get_production(client, model_id), wanted) else None,
        timeout_s=timeout_s,
        interval_s=poll_interval_s,
        timeout_message=lambda: (
            f"autoscaling settings {wanted} not applied after {timeout_s:.0f} s "
            f"(update was {status})"
        ),
        sleep=sleep,
        clock=clock,
    )


def promote(
    client: ManagementClient,
    model_id: str,
    deployment_id: str,
    *,
    autoscaling: AutoscalingSettings | None = None,
    scale_down_previous: bool = True,
    preserve_env_instance_type: bool = True,
    timeout_s: float = DEFAULT_PROMOTION_TIMEOUT_S,
    settings_timeout_s: float = DEFAULT_SETTINGS_TIMEOUT_S,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = logger.info,
) -> PromoteResult:
    """Promote, confirm through environments/production, then apply the autoscaling settings."""
    check_promotable(client.get_deployment(model_id, deployment_id))
    env = get_production(client, model_id)
    previous = _current_id(env)
    if _promotion_running(env):
        raise PromotionError(
            f"another promotion is in progress on production ({_promotion(env)}); wait for it "
            "or cancel it in the Baseten UI, then retry"
        )
    result = PromoteResult(
        model_id=model_id,
        deployment_id=deployment_id,
        production_deployment_id=deployment_id,
        previous_deployment_id=previous if previous != deployment_id else None,
        promoted=previous != deployment_id,
    )
    if result.promoted:
        log(f"promoting {deployment_id} (production is {previous or 'empty'})")
        answer = client.promote(
            model_id,
            deployment_id,
            scale_down_previous_production=scale_down_previous,
            preserve_env_instance_type=preserve_env_instance_type,
        )
        # With redeploy_on_promotion Baseten copies the deployment: production gets the copy's id.
        result.production_deployment_id = str((answer or {}).get("id") or deployment_id)
        wait_for_production(
            client,
            model_id,
            result.production_deployment_id,
            timeout_s=timeout_s,
            poll_interval_s=poll_interval_s,
            sleep=sleep,
            clock=clock,
            log=log,
        )
        log(f"production now serves {result.production_deployment_id}")
    else:
        log(f"{deployment_id} already is the production deployment")
    if autoscaling is not None:
        result.autoscaling = autoscaling.as_request()
        result.autoscaling_status = apply_autoscaling(
            client,
            model_id,
            autoscaling,
            timeout_s=settings_timeout_s,
            poll_interval_s=poll_interval_s,
            sleep=sleep,
            clock=clock,
        )
        log(f"autoscaling applied to production: {result.autoscaling}")
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--deployment-id", required=True)
    parser.add_argument("--autoscaling", type=Path, help="YAML with autoscaling settings")
    parser.add_argument(
        "--keep-previous",
        action="store_true",
        help="do not scale the previous production deployment down (faster rollback, costs GPUs)",
    )
    parser.add_argument(
        "--no-preserve-env-instance-type",
        action="store_true",
        help="use this deployment's instance type instead of production's",
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_PROMOTION_TIMEOUT_S)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL_S)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    try:
        key = api_key_from_env()
        settings = AutoscalingSettings.from_yaml(args.autoscaling) if args.autoscaling else None
    except ConfigError as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 2
    try:
        with ManagementClient(key, api_base_url()) as client:
            result = promote(
                client,
                args.model_id,
                args.deployment_id,
                autoscaling=settings,
                scale_down_previous=not args.keep_previous,
                preserve_env_instance_type=not args.no_preserve_env_instance_type,
                timeout_s=args.timeout,
                poll_interval_s=args.poll_interval,
            )
    except (PromotionError, BasetenApiError, DeploymentFailedError, WaitTimeoutError) as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"FAIL promote: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, **asdict(result)}))
    else:
        print(
            f"OK production of {result.model_id} serves {result.production_deployment_id}"
            + (f" (was {result.previous_deployment_id})" if result.previous_deployment_id else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
