#!/usr/bin/env python3
"""Promote a deployment to its model's production environment, wait until production serves it,
apply autoscaling.

    python scripts/deploy/promote.py --model-id M --deployment-id D [--autoscaling FILE] [--json]

``POST /v1/models/{m}/environments/production/promote``, then ``environments/production`` is
polled until it serves the deployment. The deployment brings its own instance type (what its
config's ``resources`` ask for); the previous production scales down unless ``--keep-previous``.
Exit code 0 when production runs the deployment (and the autoscaling settings are applied), 1 when
a step failed, 2 for bad arguments or settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from scripts.deploy import baseten_api as api

PROMOTION_TIMEOUT_S = 30 * 60.0  # a promotion may have to start GPU replicas first
SETTINGS_TIMEOUT_S = 5 * 60.0  # autoscaling updates are applied asynchronously
# The subset of UpdateAutoscalingSettingsV1 a truss checks in (autoscaling.yaml).
AUTOSCALING_REQUIRED = ("min_replica", "max_replica", "concurrency_target")
AUTOSCALING_OPTIONAL = ("target_utilization_percentage", "autoscaling_window", "scale_down_delay")


def load_autoscaling(path: Path) -> dict[str, int]:
    """Checked before anything is pushed: the API would refuse bad settings only after the
    promotion, with production already serving."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise api.ConfigError(f"cannot read autoscaling settings {path}: {exc}") from None
    if not isinstance(data, dict):
        raise api.ConfigError(f"cannot read autoscaling settings {path}: not a mapping")
    if unknown := sorted(set(data) - {*AUTOSCALING_REQUIRED, *AUTOSCALING_OPTIONAL}):
        raise api.ConfigError(f"unknown autoscaling settings: {', '.join(unknown)}")
    if missing := [k for k in AUTOSCALING_REQUIRED if k not in data]:
        raise api.ConfigError(f"autoscaling settings lack {', '.join(missing)}")
    if any(type(value) is not int or value < 0 for value in data.values()):
        raise api.ConfigError(f"autoscaling settings must be integers >= 0: {data}")
    if data["max_replica"] < max(1, data["min_replica"]) or data["concurrency_target"] < 1:
        raise api.ConfigError("autoscaling wants max_replica >= max(1, min_replica), target >= 1")
    if not 1 <= data.get("target_utilization_percentage", 1) <= 100:  # noqa: PLR2004
        raise api.ConfigError("autoscaling target_utilization_percentage must be in 1..100")
    return data


def log(line: str) -> None:
    print(f"   {line}", file=sys.stderr)


def current_id(environment: dict[str, Any] | None) -> str | None:
    return ((environment or {}).get("current_deployment") or {}).get("id")


def promote(
    client: api.ManagementClient,
    model_id: str,
    deployment_id: str,
    autoscaling: dict[str, int] | None = None,
    keep_previous: bool = False,
) -> dict[str, Any]:
    """Promote (unless it already is production), confirm, then apply ``autoscaling``. Refusing
    what cannot be promoted (a deployment that does not serve, a promotion under way) is left to
    Baseten. Progress goes to stderr."""
    previous = target = current_id(client.production(model_id))
    path = f"/v1/models/{model_id}/environments/production"
    if previous != deployment_id:
        log(f"promoting {deployment_id} (production is {previous or 'empty'})")
        body = {"deployment_id": deployment_id, "scale_down_previous_deployment": not keep_previous}
        body["preserve_env_instance_type"] = False  # its own instance type, from `resources`
        answer = client.call("POST", f"{path}/promote", body) or {}
        # With redeploy_on_promotion Baseten copies the deployment: production gets the copy's id.
        target = str(answer.get("id") or deployment_id)

        def promoted() -> bool | None:
            environment = client.production(model_id) or {}
            promotion = environment.get("in_progress_promotion") or {}
            if promotion.get("status") in api.PROMOTION_FAILED_STATUSES:
                reason = promotion.get("error_message") or "no reason given"
                raise api.DeployError(f"promotion {promotion['status']}: {reason}")
            if current_id(environment) == target and promotion.get("status") in (None, "SUCCEEDED"):
                return True
            status = client.deployment(model_id, target).get("status")
            if status in api.FAILED_STATUSES:
                raise api.DeployError(f"deployment {target} of model {model_id} is {status}")
            return None

        timeout = f"production does not serve {target} in {PROMOTION_TIMEOUT_S:.0f} s"
        client.poll(promoted, PROMOTION_TIMEOUT_S, timeout)
        log(f"production now serves {target}")
    if autoscaling:
        client.call("PATCH", path, {"autoscaling_settings": autoscaling})

        def applied() -> bool | None:
            current = (client.production(model_id) or {}).get("autoscaling_settings") or {}
            return all(current.get(k) == v for k, v in autoscaling.items()) or None

        client.poll(applied, SETTINGS_TIMEOUT_S, f"autoscaling {autoscaling} not applied")
        log(f"autoscaling applied to production: {autoscaling}")
    return {
        "production_deployment_id": target,
        "previous_deployment_id": previous,
        "promoted": previous != deployment_id,  # False: it already was production
        "autoscaling": autoscaling,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--deployment-id", required=True)
    parser.add_argument("--autoscaling", type=Path, help="YAML with autoscaling settings")
    parser.add_argument("--keep-previous", action="store_true", help="keep the old one warm")
    parser.add_argument("--poll-interval", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        key = api.api_key_from_env()
        settings = load_autoscaling(args.autoscaling) if args.autoscaling else None
    except api.ConfigError as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 2
    try:
        with api.ManagementClient(key, poll_interval_s=args.poll_interval) as client:
            result = promote(
                client, args.model_id, args.deployment_id, settings, args.keep_previous
            )
    except api.DeployError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}) if args.json else f"FAIL {exc}")
        return 1
    print(json.dumps({"ok": True, **result}) if args.json else f"OK {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
