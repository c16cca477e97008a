"""Small client for the few Baseten management REST endpoints the deploy scripts use.

Base URL from ``BASETEN_API_URL`` (default ``https://api.baseten.co``), key from ``BASETEN_API_KEY``
only. The key goes into the ``Authorization`` header and nowhere else: never into a message or a log.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from scripts.clients.auth import API_KEY_ENV
from scripts.deploy.poll import WaitTimeoutError as WaitTimeoutError  # raised by the waits
from scripts.deploy.poll import poll_until

logger = logging.getLogger(__name__)

API_URL_ENV = "BASETEN_API_URL"
DEFAULT_API_URL = "https://api.baseten.co"
PRODUCTION = "production"

# DeploymentStatusV1 in the management OpenAPI, split by what a deploy script does with each.
PENDING_STATUSES = frozenset({"BUILDING", "DEPLOYING", "LOADING_MODEL", "UPDATING", "WAKING_UP"})
ACTIVE_STATUS = "ACTIVE"
# Built and healthy but asleep: it wakes on the first request (the smoke test's 503 retries cover it).
SCALED_TO_ZERO_STATUS = "SCALED_TO_ZERO"
FAILED_STATUSES = frozenset(
    {
        "BUILD_FAILED",
        "BUILD_STOPPED",
        "DEPLOY_FAILED",
        "FAILED",
        "INACTIVE",
        "DEACTIVATING",
    }
)
# Replicas failing their health checks: Baseten restarts them and the deployment can recover, so
# a wait goes on (until its deadline) instead of giving up at the first poll that shows it.
RECOVERABLE_STATUSES = frozenset({"UNHEALTHY"})
# InProgressPromotionStatusV1: the promotion is over, one way or the other.
PROMOTION_FAILED_STATUSES = frozenset({"FAILED", "CANCELED"})
PROMOTION_SUCCEEDED_STATUS = "SUCCEEDED"

# Fields of UpdateAutoscalingSettingsV1 we let a checked-in YAML set.
AUTOSCALING_FIELDS = (
    "min_replica",
    "max_replica",
    "concurrency_target",
    "target_utilization_percentage",
    "autoscaling_window",
    "scale_down_delay",
)

HTTP_TOO_MANY_REQUESTS = 429
# Gateway hiccups worth retrying for requests that are safe to repeat.
RETRYABLE_GATEWAY_STATUSES = frozenset({502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "PATCH"})


class ConfigError(RuntimeError):
    """A missing or malformed setting (environment variable, YAML file)."""


class BasetenApiError(RuntimeError):
    """The management API answered with an error status (after the retries allowed)."""

    def __init__(self, method: str, path: str, status_code: int, detail: str) -> None:
        super().__init__(f"{method} {path} failed with HTTP {status_code}: {detail}")
        self.method = method
        self.path = path
        self.status_code = status_code
        self.detail = detail


class DeploymentFailedError(RuntimeError):
    """The deployment reached a status it will not recover from on its own."""

    def __init__(self, model_id: str, deployment_id: str, status: str) -> None:
        super().__init__(f"deployment {deployment_id} of model {model_id} is {status}")
        self.model_id = model_id
        self.deployment_id = deployment_id
        self.status = status


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry rate-limited or gateway-failed requests."""

    max_attempts: int = 8
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff for the given 1-based attempt, capped."""
        return min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))


def api_base_url(env: Mapping[str, str] | None = None) -> str:
    """The management API base URL: ``BASETEN_API_URL`` or Baseten's public one."""
    env = os.environ if env is None else env
    return (env.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def api_key_from_env(env: Mapping[str, str] | None = None) -> str:
    """The API key from ``BASETEN_API_KEY`` (the only place it is read from)."""
    env = os.environ if env is None else env
    key = (env.get(API_KEY_ENV) or "").strip()
    if not key:
        raise ConfigError(f"{API_KEY_ENV} is not set: export your Baseten API key first")
    return key


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of the secret in text (defence in depth for error messages)."""
    if secret and secret in text:
        return text.replace(secret, "***")
    return text


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def retry_hint_s(response: httpx.Response) -> float | None:
    """The server's retry hint: ``Retry-After``, else a JSON body's ``retry_after``."""
    hint = parse_retry_after(response.headers.get("retry-after"))
    if hint is not None:
        return hint
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict):
        value = body.get("retry_after")
        if isinstance(value, int | float) and value >= 0:
            return float(value)
    return None


def websocket_base(predict_url: str) -> str:
    """``https://model-x.api.baseten.co/deployment/d/predict`` -> ``wss://model-x.api.baseten.co``."""
    parts = urlsplit(predict_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {predict_url!r}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def deployment_ws_url(base: str, deployment_id: str) -> str:
    """WebSocket URL of one deployment."""
    return f"{base}/deployment/{quote(deployment_id, safe='')}/websocket"


def environment_ws_url(base: str, environment: str = PRODUCTION) -> str:
    """WebSocket URL of an environment (production by default)."""
    return f"{base}/environments/{quote(environment, safe='')}/websocket"


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if key in body:
                return str(body[key])[:500]
    return str(body)[:500]


class ManagementClient:
    """Synchronous client for the management endpoints used by push/promote/deploy."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._key = api_key
        self.base_url = (base_url or api_base_url()).rstrip("/")
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
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
        """One API call with retries: 429 always (honouring its hint), gateway errors if idempotent."""
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                if method not in IDEMPOTENT_METHODS or attempt >= self._retry.max_attempts:
                    raise BasetenApiError(method, path, 0, redact(str(exc), self._key)) from None
                delay = self._retry.backoff_s(attempt)
                logger.warning(
                    "%s %s: %s; retrying in %.1f s", method, path, type(exc).__name__, delay
                )
                self._sleep(delay)
                continue
            retryable = response.status_code == HTTP_TOO_MANY_REQUESTS or (
                response.status_code in RETRYABLE_GATEWAY_STATUSES and method in IDEMPOTENT_METHODS
            )
            if retryable and attempt < self._retry.max_attempts:
                hint = retry_hint_s(response)
                delay = self._retry.backoff_s(attempt) if hint is None else hint
                delay = min(delay, self._retry.max_delay_s)
                logger.warning(
                    "%s %s: HTTP %d; retrying in %.1f s (attempt %d/%d)",
                    method,
                    path,
                    response.status_code,
                    delay,
                    attempt,
                    self._retry.max_attempts,
                )
                self._sleep(delay)
                continue
            if response.is_error:
                detail = redact(_detail(response), self._key)
                raise BasetenApiError(method, path, response.status_code, detail)
            if not response.content:
                return None
            return response.json()

    # --- endpoints ------------------------------------------------------------------------

    @staticmethod
    def _model_path(model_id: str) -> str:
        return f"/v1/models/{quote(model_id, safe='')}"

    def get_deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        path = f"{self._model_path(model_id)}/deployments/{quote(deployment_id, safe='')}"
        return self.request("GET", path)

    def promote(
        self,
        model_id: str,
        deployment_id: str,
        *,
        scale_down_previous_production: bool = True,
        preserve_env_instance_type: bool = True,
    ) -> dict[str, Any]:
        path = f"{self._model_path(model_id)}/deployments/{quote(deployment_id, safe='')}/promote"
        body = {
            "scale_down_previous_production": scale_down_previous_production,
            "preserve_env_instance_type": preserve_env_instance_type,
        }
        return self.request("POST", path, body)

    def get_environment(self, model_id: str, environment: str = PRODUCTION) -> dict[str, Any]:
        path = f"{self._model_path(model_id)}/environments/{quote(environment, safe='')}"
        return self.request("GET", path)

    def update_environment_autoscaling(
        self, model_id: str, settings: Mapping[str, int], environment: str = PRODUCTION
    ) -> dict[str, Any]:
        path = f"{self._model_path(model_id)}/environments/{quote(environment, safe='')}"
        return self.request("PATCH", path, {"autoscaling_settings": dict(settings)})

    def update_deployment_autoscaling(
        self, model_id: str, deployment_id: str, settings: Mapping[str, int]
    ) -> dict[str, Any]:
        path = (
            f"{self._model_path(model_id)}/deployments/{quote(deployment_id, safe='')}"
            "/autoscaling_settings"
        )
        return self.request("PATCH", path, dict(settings))

    def list_teams(self) -> list[dict[str, Any]]:
        return list((self.request("GET", "/v1/teams") or {}).get("teams", []))

    def team_id(self, team: str) -> str:
        """The id of a team given by name (as ``truss push --team`` takes it) or by id."""
        teams = self.list_teams()
        for item in teams:
            if team in (item.get("name"), item.get("id")):
                return str(item["id"])
        names = ", ".join(sorted(str(t.get("name")) for t in teams)) or "none"
        raise ConfigError(f"no team {team!r} for this API key (teams: {names})")

    def list_secret_names(self, team: str | None = None) -> set[str]:
        """Names of the secrets a deployment can use (values are never returned by the API):
        the team's when a team is named (accounts with several teams), else the workspace's."""
        if team:
            path = f"/v1/teams/{quote(self.team_id(team), safe='')}/secrets"
        else:
            path = "/v1/secrets"
        answer = self.request("GET", path) or {}
        return {str(item.get("name")) for item in answer.get("secrets", [])}

    # --- waits ----------------------------------------------------------------------------

    def wait_for_deployment(
        self,
        model_id: str,
        deployment_id: str,
        *,
        timeout_s: float,
        poll_interval_s: float = 10.0,
        accept_scaled_to_zero: bool = True,
        clock: Callable[[], float] = time.monotonic,
        on_status: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the deployment is ACTIVE (or asleep, if accepted); raise on failure/timeout."""
        seen: dict[str, str | None] = {"status": None}

        def check() -> dict[str, Any] | None:
            deployment = self.get_deployment(model_id, deployment_id)
            status = str(deployment.get("status"))
            if status != seen["status"] and on_status is not None:
                on_status(status)
            seen["status"] = status
            if status == ACTIVE_STATUS or (
                accept_scaled_to_zero and status == SCALED_TO_ZERO_STATUS
            ):
                return deployment
            if status in FAILED_STATUSES:
                raise DeploymentFailedError(model_id, deployment_id, status)
            if status in RECOVERABLE_STATUSES:
                logger.warning(
                    "deployment %s is %s; waiting for it to recover", deployment_id, status
                )
            elif status not in PENDING_STATUSES and status != SCALED_TO_ZERO_STATUS:
                logger.warning("unknown deployment status %s; still waiting", status)
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
