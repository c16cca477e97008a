"""The few Baseten management REST endpoints the deploy tools use, and the one polling loop.

Base URL from ``BASETEN_API_URL`` (default https://api.baseten.co), key from ``BASETEN_API_KEY``
only; the key goes into the ``Authorization`` header and nowhere else (never a message or a log).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from scripts.clients.auth import API_KEY_ENV

logger = logging.getLogger(__name__)

API_URL_ENV = "BASETEN_API_URL"
PRODUCTION = "production"
# DeploymentStatusV1, split by what a deploy does with each.
PENDING_STATUSES = frozenset({"BUILDING", "DEPLOYING", "LOADING_MODEL", "UPDATING", "WAKING_UP"})
ACTIVE_STATUS, SCALED_TO_ZERO_STATUS = "ACTIVE", "SCALED_TO_ZERO"
FAILED_STATUSES = frozenset(
    {"BUILD_FAILED", "BUILD_STOPPED", "DEPLOY_FAILED", "FAILED", "INACTIVE", "DEACTIVATING"}
)
# Replicas failing health checks while they start: Baseten restarts them and the deployment can
# recover, so a wait goes on until the model's start-up threshold (truss push --wait gives up).
RECOVERABLE_STATUSES = frozenset({"UNHEALTHY"})
PROMOTION_FAILED_STATUSES = frozenset({"FAILED", "CANCELED"})
PROMOTION_SUCCEEDED_STATUS = "SUCCEEDED"
AUTOSCALING_FIELDS = (
    "min_replica",
    "max_replica",
    "concurrency_target",
    "target_utilization_percentage",
    "autoscaling_window",
    "scale_down_delay",
)
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # 429 always; gateway errors for GET/PATCH


class ConfigError(RuntimeError):
    """A missing or malformed setting (environment variable, YAML file)."""


class WaitTimeoutError(TimeoutError):
    """A poll did not reach its goal before its deadline."""


class BasetenApiError(RuntimeError):
    def __init__(self, method: str, path: str, status_code: int, detail: str) -> None:
        super().__init__(f"{method} {path} failed with HTTP {status_code}: {detail}")
        self.status_code = status_code


class DeploymentFailedError(RuntimeError):
    def __init__(self, model_id: str, deployment_id: str, status: str) -> None:
        super().__init__(f"deployment {deployment_id} of model {model_id} is {status}")
        self.status = status


def poll_until(
    check: Callable[[], Any],
    *,
    timeout_s: float,
    interval_s: float,
    timeout_message: Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Call ``check`` until it returns non-None (its answer) or raises; at the deadline
    ``WaitTimeoutError(timeout_message())``."""
    deadline = clock() + timeout_s
    while (answer := check()) is None:
        if clock() >= deadline:
            raise WaitTimeoutError(timeout_message())
        sleep(interval_s)
    return answer


def api_base_url(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return (env.get(API_URL_ENV) or "https://api.baseten.co").rstrip("/")


def api_key_from_env(env: Mapping[str, str] | None = None) -> str:
    key = ((os.environ if env is None else env).get(API_KEY_ENV) or "").strip()
    if not key:
        raise ConfigError(f"{API_KEY_ENV} is not set: export your Baseten API key first")
    return key


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def websocket_base(predict_url: str) -> str:
    """``https://model-x.api.baseten.co/deployment/d/predict`` -> ``wss://model-x.api.baseten.co``."""
    parts = urlsplit(predict_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {predict_url!r}")
    return urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, "", "", ""))


def deployment_ws_url(base: str, deployment_id: str) -> str:
    return f"{base}/deployment/{quote(deployment_id, safe='')}/websocket"


def environment_ws_url(base: str, environment: str = PRODUCTION) -> str:
    return f"{base}/environments/{quote(environment, safe='')}/websocket"


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        return str(next((body[k] for k in ("error", "message", "detail") if k in body), body))
    return str(body)[:500]


class ManagementClient:
    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_attempts: int = 8,
        max_delay_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._key, self._sleep = api_key, sleep
        self.max_attempts, self.max_delay_s = max_attempts, max_delay_s
        self._http = httpx.Client(
            base_url=(base_url or api_base_url()).rstrip("/"),
            headers={"Authorization": f"Api-Key {api_key}", "Accept": "application/json"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call; retries 429 (honouring Retry-After seconds) and, for GET/PATCH, gateway
        errors and dropped connections, with exponential backoff."""
        for attempt in range(1, self.max_attempts + 1):
            delay = min(self.max_delay_s, 2.0 ** (attempt - 1))
            safe = method in ("GET", "PATCH")
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                if not safe or attempt == self.max_attempts:
                    raise BasetenApiError(method, path, 0, redact(str(exc), self._key)) from None
                self._sleep(delay)
                continue
            code = response.status_code
            if code in RETRY_STATUSES and (safe or code == 429) and attempt < self.max_attempts:
                try:
                    delay = min(self.max_delay_s, float(response.headers["retry-after"]))
                except (KeyError, ValueError):
                    pass
                logger.warning("%s %s: HTTP %d; retrying in %.1f s", method, path, code, delay)
                self._sleep(delay)
                continue
            if response.is_error:
                raise BasetenApiError(method, path, code, redact(_detail(response), self._key))
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    @staticmethod
    def _dep(model_id: str, deployment_id: str = "") -> str:
        path = f"/v1/models/{quote(model_id, safe='')}"
        return f"{path}/deployments/{quote(deployment_id, safe='')}" if deployment_id else path

    def list_models(self) -> list[dict[str, Any]]:
        return list((self.request("GET", "/v1/models") or {}).get("models", []))

    def get_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self.request("GET", self._dep(model_id, deployment_id))

    def deactivate(self, model_id: str, deployment_id: str) -> Any:
        return self.request("POST", f"{self._dep(model_id, deployment_id)}/deactivate")

    def promote(
        self,
        model_id: str,
        deployment_id: str,
        *,
        scale_down_previous_production: bool = True,
        preserve_env_instance_type: bool = False,
    ) -> dict[str, Any]:
        body = {
            "scale_down_previous_production": scale_down_previous_production,
            "preserve_env_instance_type": preserve_env_instance_type,
        }
        return self.request("POST", f"{self._dep(model_id, deployment_id)}/promote", body)

    def get_environment(self, model_id: str, environment: str = PRODUCTION) -> dict[str, Any]:
        return self.request("GET", f"{self._dep(model_id)}/environments/{environment}")

    def update_environment_autoscaling(
        self, model_id: str, settings: Mapping[str, int], environment: str = PRODUCTION
    ) -> dict[str, Any]:
        path = f"{self._dep(model_id)}/environments/{environment}"
        return self.request("PATCH", path, {"autoscaling_settings": dict(settings)})

    def update_deployment_autoscaling(
        self, model_id: str, deployment_id: str, settings: Mapping[str, int]
    ) -> dict[str, Any]:
        path = f"{self._dep(model_id, deployment_id)}/autoscaling_settings"
        return self.request("PATCH", path, dict(settings))

    def list_secret_names(self, team: str | None = None) -> set[str]:
        """Secret names (never values) of the team named (by name or id), else the workspace."""
        path = "/v1/secrets"
        if team:
            teams = (self.request("GET", "/v1/teams") or {}).get("teams", [])
            found = [t["id"] for t in teams if team in (t.get("name"), t.get("id"))]
            if not found:
                names = ", ".join(sorted(str(t.get("name")) for t in teams)) or "none"
                raise ConfigError(f"no team {team!r} for this API key (teams: {names})")
            path = f"/v1/teams/{quote(str(found[0]), safe='')}/secrets"
        return {str(s.get("name")) for s in (self.request("GET", path) or {}).get("secrets", [])}

    def wait_for_deployment(
        self,
        model_id: str,
        deployment_id: str,
        *,
        timeout_s: float,
        poll_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_status: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until ACTIVE (or SCALED_TO_ZERO: built and healthy, asleep). UNHEALTHY and the
        building statuses are waited out until ``timeout_s``; a failed status raises."""
        seen: dict[str, str | None] = {"status": None}

        def check() -> dict[str, Any] | None:
            deployment = self.get_deployment(model_id, deployment_id)
            status = str(deployment.get("status"))
            if status != seen["status"] and on_status is not None:
                on_status(status)
            seen["status"] = status
            if status in (ACTIVE_STATUS, SCALED_TO_ZERO_STATUS):
                return deployment
            if status in FAILED_STATUSES:
                raise DeploymentFailedError(model_id, deployment_id, status)
            return None

        return poll_until(
            check,
            timeout_s=timeout_s,
            interval_s=poll_interval_s,
            timeout_message=lambda: (
                f"deployment {deployment_id} still {seen['status']} after {timeout_s:.0f} s"
            ),
            sleep=self._sleep,
            clock=clock,
        )
