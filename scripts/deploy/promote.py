#!/usr/bin/env python3
"""Promote a Baseten deployment to production, wait until production serves it, apply autoscaling.

    python scripts/deploy/promote.py --model-id M --deployment-id D [--autoscaling FILE] [--json]

The deployment brings its own instance type (what its config's ``resources`` ask for:
``preserve_env_instance_type`` false) unless ``--preserve-env-instance-type``. Exit code 0 when
production runs the deployment (and the autoscaling settings are applied), 1 when a step failed,
2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.deploy.baseten_api import (
    ACTIVE_STATUS,
    AUTOSCALING_FIELDS,
    FAILED_STATUSES,
    PRODUCTION,
    PROMOTION_FAILED_STATUSES,
    PROMOTION_SUCCEEDED_STATUS,
    SCALED_TO_ZERO_STATUS,
    BasetenApiError,
    ConfigError,
    DeploymentFailedError,
    ManagementClient,
    WaitTimeoutError,
    api_base_url,
    api_key_from_env,
    poll_until,
)

DEFAULT_PROMOTION_TIMEOUT_S = 30 * 60.0  # a promotion may have to start GPU replicas first
DEFAULT_SETTINGS_TIMEOUT_S = 5 * 60.0  # autoscaling updates are applied asynchronously
ERRORS = (BasetenApiError, DeploymentFailedError, WaitTimeoutError)


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
        values = {k: v for k, v in asdict(self).items() if v is not None}
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in values.values()):
            raise ConfigError(f"autoscaling settings must be integers >= 0: {values}")
        if self.max_replica < max(1, self.min_replica) or self.concurrency_target < 1:
            raise ConfigError(
                "autoscaling needs max_replica >= max(1, min_replica) and target >= 1"
            )
        if not 1 <= (self.target_utilization_percentage or 1) <= 100:  # noqa: PLR2004
            raise ConfigError("autoscaling target_utilization_percentage must be in 1..100")

    @classmethod
    def from_yaml(cls, path: Path) -> AutoscalingSettings:
        try:
            data = yaml.safe_load(path.read_text())
            unknown = sorted(set(data) - set(AUTOSCALING_FIELDS))
            if unknown:
                raise ConfigError(f"unknown autoscaling settings: {', '.join(unknown)}")
            return cls(**data)
        except (OSError, yaml.YAMLError, TypeError) as exc:
            raise ConfigError(f"cannot read autoscaling settings {path}: {exc}") from None

    def as_request(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class PromoteResult:
    model_id: str
    deployment_id: str
    production_deployment_id: str
    previous_deployment_id: str | None
    promoted: bool  # False when the deployment already was production
    autoscaling: dict[str, int] | None = None


def get_production(client: ManagementClient, model_id: str) -> dict[str, Any] | None:
    """The production environment, or None while the model has none yet."""
    try:
        return client.get_environment(model_id, PRODUCTION)
    except BasetenApiError as exc:
        if exc.status_code == 404:  # noqa: PLR2004
            return None
        raise


def _current(env: Mapping[str, Any] | None) -> str | None:
    return ((env or {}).get("current_deployment") or {}).get("id")


def _running(env: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    promotion = (env or {}).get("in_progress_promotion")
    done = PROMOTION_FAILED_STATUSES | {PROMOTION_SUCCEEDED_STATUS}
    return promotion if promotion and promotion.get("status") not in done else None


def promote(
    client: ManagementClient,
    model_id: str,
    deployment_id: str,
    *,
    autoscaling: AutoscalingSettings | None = None,
    scale_down_previous: bool = True,
    preserve_env_instance_type: bool = False,
    timeout_s: float = DEFAULT_PROMOTION_TIMEOUT_S,
    poll_interval_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = print,
) -> PromoteResult:
    """Promote, confirm through environments/production, then apply the autoscaling settings."""
    status = str(client.get_deployment(model_id, deployment_id).get("status"))
    if status not in (ACTIVE_STATUS, SCALED_TO_ZERO_STATUS):
        raise PromotionError(f"deployment {deployment_id} is {status}: only ACTIVE ones serve")
    env = get_production(client, model_id)
    if _running(env):
        raise PromotionError(f"another promotion is in progress ({_running(env)}); retry later")
    previous = _current(env)
    result = PromoteResult(
        model_id, deployment_id, deployment_id, previous, previous != deployment_id
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
        target = result.production_deployment_id = str((answer or {}).get("id") or deployment_id)

        def promoted() -> bool | None:
            env = get_production(client, model_id)
            promotion = (env or {}).get("in_progress_promotion") or {}
            if promotion.get("status") in PROMOTION_FAILED_STATUSES:
                reason = promotion.get("error_message") or "no reason given"
                raise PromotionError(f"promotion {promotion['status']}: {reason}")
            if _current(env) == target and not _running(env):
                return True
            dep_status = str(client.get_deployment(model_id, target).get("status"))
            if dep_status in FAILED_STATUSES:
                raise DeploymentFailedError(model_id, target, dep_status)
            return None

        poll_until(
            promoted,
            timeout_s=timeout_s,
            interval_s=poll_interval_s,
            timeout_message=lambda: f"production does not serve {target} after {timeout_s:.0f} s",
            sleep=sleep,
        )
        log(f"production now serves {target}")
    if autoscaling is not None:
        wanted = result.autoscaling = autoscaling.as_request()
        client.update_environment_autoscaling(model_id, wanted, PRODUCTION)

        def applied() -> bool | None:
            current = (get_production(client, model_id) or {}).get("autoscaling_settings") or {}
            return all(current.get(k) == v for k, v in wanted.items()) or None

        poll_until(
            applied,
            timeout_s=DEFAULT_SETTINGS_TIMEOUT_S,
            interval_s=poll_interval_s,
            timeout_message=lambda: f"autoscaling {wanted} not applied to production",
            sleep=sleep,
        )
        log(f"autoscaling applied to production: {wanted}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--deployment-id", required=True)
    parser.add_argument("--autoscaling", type=Path, help="YAML with autoscaling settings")
    parser.add_argument("--keep-previous", action="store_true", help="keep the old one warm")
    parser.add_argument("--preserve-env-instance-type", action="store_true")
    parser.add_argument("--timeout", type=float, default=DEFAULT_PROMOTION_TIMEOUT_S)
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
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
                preserve_env_instance_type=args.preserve_env_instance_type,
                timeout_s=args.timeout,
                poll_interval_s=args.poll_interval,
                log=lambda line: print(line, file=sys.stderr),
            )
    except (PromotionError, *ERRORS) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}) if args.json else f"FAIL {exc}")
        return 1
    print(json.dumps({"ok": True, **asdict(result)}) if args.json else f"OK {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
