"""The Baseten management REST API (``BASETEN_API_URL``, default https://api.baseten.co) as the
deploy tools call it, and the one polling loop.

The key comes from ``BASETEN_API_KEY`` only and goes into the ``Authorization`` header and nowhere
else (never a message or a log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from scripts.clients.auth import API_KEY_ENV

logger = logging.getLogger(__name__)

# DeploymentStatusV1: what a wait stops at. Everything else is waited out: the building statuses,
# and UNHEALTHY (replicas failing health checks while they start: Baseten restarts them and the
# deployment can recover before the model's start-up threshold; truss push --wait gives up).
READY_STATUSES = frozenset({"ACTIVE", "SCALED_TO_ZERO"})  # SCALED_TO_ZERO: built, healthy, asleep
FAILED_STATUSES = frozenset(
    {"BUILD_FAILED", "BUILD_STOPPED", "DEPLOY_FAILED", "FAILED", "INACTIVE", "DEACTIVATING"}
)
PROMOTION_FAILED_STATUSES = frozenset({"FAILED", "CANCELED"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})  # 429 always; gateway errors for GET/PATCH
MAX_ATTEMPTS, MAX_DELAY_S = 8, 60.0


class ConfigError(ValueError):
    """A missing or malformed setting (environment variable, YAML file): exit code 2."""


class DeployError(RuntimeError):
    """A step failed (push, wait, promotion); the message says why, ``next_steps`` what to do."""

    def __init__(self, message: str, next_steps: str = "") -> None:
        super().__init__(message)
        self.next_steps = next_steps


class WaitTimeoutError(DeployError):
    """A poll did not reach its goal before its deadline."""


class BasetenApiError(DeployError):
    def __init__(self, message: str, status_code: int = 0) -> None:
        super().__init__(message)
        self.status_code = status_code


def api_key_from_env() -> str:
    key = (os.environ.get(API_KEY_ENV) or "").strip()
    if not key:
        raise ConfigError(f"{API_KEY_ENV} is not set: export your Baseten API key first")
    return key


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class ManagementClient(httpx.Client):
    """``call`` retries 429 (honouring Retry-After seconds) for every method, and gateway errors
    and dropped connections for GET/PATCH only (a POST may have taken effect), with exponential
    backoff. ``poll_interval_s`` paces every wait."""

    sleep = staticmethod(time.sleep)  # tests record or skip the waits

    def __init__(self, key: str, base_url: str | None = None, poll_interval_s: float = 10) -> None:
        base_url = base_url or os.environ.get("BASETEN_API_URL") or "https://api.baseten.co"
        headers = {"Authorization": f"Api-Key {key}", "Accept": "application/json"}
        super().__init__(base_url=base_url.rstrip("/"), headers=headers, timeout=30.0)
        self.key, self.poll_interval_s = key, poll_interval_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            delay, safe = min(MAX_DELAY_S, 2.0 ** (attempt - 1)), method in ("GET", "PATCH")
            try:
                response = self.request(method, path, json=body)
            except httpx.TransportError as exc:
                if not safe or attempt == MAX_ATTEMPTS:
                    reason = redact(str(exc), self.key)
                    raise BasetenApiError(f"{method} {path}: {reason}") from None
                self.sleep(delay)
                continue
            code = response.status_code
            if code in RETRY_STATUSES and (safe or code == 429) and attempt < MAX_ATTEMPTS:
                with contextlib.suppress(KeyError, ValueError):
                    delay = min(MAX_DELAY_S, float(response.headers["retry-after"]))
                logger.warning("%s %s: HTTP %d; retrying in %.1f s", method, path, code, delay)
                self.sleep(delay)
                continue
            if response.is_error:
                detail = redact(response.text[:500] or response.reason_phrase, self.key)
                raise BasetenApiError(f"{method} {path} failed with HTTP {code}: {detail}", code)
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    def poll(self, check: Callable[[], Any], timeout_s: float, timeout_message: str) -> Any:
        """``check()`` every ``poll_interval_s`` until it answers (not None) or raises."""
        deadline = time.monotonic() + timeout_s
        while (answer := check()) is None:
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(timeout_message)
            self.sleep(self.poll_interval_s)
        return answer

    def deployment(self, model_id: str, deployment_id: str) -> dict[str, Any]:
        return self.call("GET", f"/v1/models/{model_id}/deployments/{deployment_id}")

    def production(self, model_id: str) -> dict[str, Any] | None:
        """The production environment, or None while the model has none yet."""
        try:
            return self.call("GET", f"/v1/models/{model_id}/environments/production")
        except BasetenApiError as exc:
            if exc.status_code == 404:  # noqa: PLR2004
                return None
            raise

    def model_ids(self) -> dict[str, str]:
        """Model name -> id."""
        models = (self.call("GET", "/v1/models") or {}).get("models", [])
        return {str(m.get("name")): str(m.get("id")) for m in models}

    def secret_names(self, team: str | None = None) -> set[str]:
        """Secret names (never values) of the team named (by name or id), else the workspace."""
        path = "/v1/secrets"
        if team:
            teams = (self.call("GET", "/v1/teams") or {}).get("teams", [])
            found = [t["id"] for t in teams if team in (t.get("name"), t.get("id"))]
            if not found:
                names = ", ".join(sorted(str(t.get("name")) for t in teams)) or "none"
                raise ConfigError(f"no team {team!r} for this API key: set BASETEN_TEAM to {names}")
            path = f"/v1/teams/{found[0]}/secrets"
        return {str(s.get("name")) for s in (self.call("GET", path) or {}).get("secrets", [])}
