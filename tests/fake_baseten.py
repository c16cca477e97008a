"""A local fake of Baseten's management REST API: a real HTTP server on 127.0.0.1.

It implements the endpoints scripts/deploy/ calls (paths and body fields as in the published
OpenAPI, see tests/fixtures/baseten_management_api_subset.json), deployment status transitions,
promotions that ramp over several polls and may fail (refused for a deployment that does not
serve, or while another runs), asynchronous autoscaling updates, auth, and injected failures (429
with a Retry-After hint, 5xx).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

SUBSET_PATH = Path(__file__).parent / "fixtures" / "baseten_management_api_subset.json"
SUBSET = json.loads(SUBSET_PATH.read_text())
SCHEMAS = SUBSET["schemas"]

DEFAULT_AUTOSCALING = {
    "min_replica": 0,
    "max_replica": 1,
    "autoscaling_window": 60,
    "scale_down_delay": 900,
    "concurrency_target": 1,
    "target_utilization_percentage": 70,
}

# (method, OpenAPI path template) for every route served; tests check them against the spec.
ROUTES: list[tuple[str, str]] = [
    ("GET", "/v1/models/{model_id}/deployments/{deployment_id}"),
    ("POST", "/v1/models/{model_id}/environments/{env_name}/promote"),
    ("GET", "/v1/models/{model_id}/environments/{env_name}"),
    ("PATCH", "/v1/models/{model_id}/environments/{env_name}"),
    ("GET", "/v1/secrets"),
    ("PATCH", "/v1/models/{model_id}/deployments/{deployment_id}/autoscaling_settings"),
    ("GET", "/v1/teams"),
    ("GET", "/v1/teams/{team_id}/secrets"),
    ("GET", "/v1/models"),
    ("POST", "/v1/models/{model_id}/deployments/{deployment_id}/deactivate"),
]


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


_COMPILED = [(method, template, _template_regex(template)) for method, template in ROUTES]


@dataclass
class FakeDeployment:
    model_id: str
    deployment_id: str
    # Statuses shown by successive GETs; the last one sticks.
    statuses: deque[str] = field(default_factory=lambda: deque(["ACTIVE"]))
    name: str = ""
    # Its own settings (a deployment outside an environment); None until set.
    autoscaling: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return self.statuses[0]

    def advance(self) -> None:
        if len(self.statuses) > 1:
            self.statuses.popleft()

    def set_status(self, status: str) -> None:
        self.statuses = deque([status])


@dataclass
class FakeEnvironment:
    model_id: str
    name: str
    current: str | None = None
    candidate: str | None = None
    promotion: dict[str, Any] | None = None
    polls_left: int = 0
    outcome: str = "SUCCEEDED"
    scale_down_previous: bool = True
    autoscaling: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_AUTOSCALING))
    pending_autoscaling: dict[str, Any] | None = None
    autoscaling_polls_left: int = 0


@dataclass
class Injected:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    method: str | None
    path_contains: str | None


class FakeBaseten:
    """State + HTTP server. Use as a context manager; ``url`` is the base for BASETEN_API_URL."""

    def __init__(self, api_key: str = "fake-key-0123456789") -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.deployments: dict[tuple[str, str], FakeDeployment] = {}
        self.environments: dict[tuple[str, str], FakeEnvironment] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.injected: deque[Injected] = deque()
        self.promotion_polls = 2  # environment GETs that show a running promotion
        self.promotion_outcome = "SUCCEEDED"
        self.promotion_error = "replicas failed health checks"
        self.autoscaling_polls = 1  # environment GETs before an autoscaling update shows
        self.redeploy_on_promotion = False
        self.secrets: set[str] = {"hf_access_token"}
        self.teams: dict[str, str] = {"team-default": "Default Team"}  # id -> name
        self.team_secrets: dict[str, set[str]] = {}  # team id -> secret names
        self.models: dict[str, str] = {}  # model id -> name (GET /v1/models)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- scenario set-up --------------------------------------------------------------------

    def add_deployment(
        self, model_id: str, deployment_id: str, statuses: list[str] | None = None, name: str = ""
    ) -> FakeDeployment:
        dep = FakeDeployment(model_id, deployment_id, deque(statuses or ["ACTIVE"]), name)
        with self.lock:
            self.deployments[(model_id, deployment_id)] = dep
        return dep

    def set_production(self, model_id: str, deployment_id: str | None) -> FakeEnvironment:
        with self.lock:
            env = self.environments.setdefault(
                (model_id, "production"), FakeEnvironment(model_id, "production")
            )
            env.current = deployment_id
        return env

    def inject(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: str | None = None,
        method: str | None = None,
        path_contains: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Answer the next matching requests with this status instead of serving them."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        for _ in range(times):
            self.injected.append(
                Injected(
                    status, headers, body or {"error": f"injected {status}"}, method, path_contains
                )
            )

    def production(self, model_id: str) -> FakeEnvironment:
        return self.environments[(model_id, "production")]

    def calls(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, Any]]:
        with self.lock:
            return [
                r for r in self.requests if (method is None or r[0] == method) and contains in r[1]
            ]

    # --- server lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeBaseten:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    # --- API behaviour (called with the lock held) ----------------------------------------

    def _deployment_json(self, dep: FakeDeployment) -> dict[str, Any]:
        env = self.environments.get((dep.model_id, "production"))
        is_prod = env is not None and env.current == dep.deployment_id
        return {
            "id": dep.deployment_id,
            "created_at": _now(),
            "name": dep.name or dep.deployment_id,
            "model_id": dep.model_id,
            "is_production": is_prod,
            "is_development": False,
            "status": dep.status,
            "active_replica_count": 1 if dep.status == "ACTIVE" else 0,
            "autoscaling_settings": dict(env.autoscaling) if (env and is_prod) else None,
            "instance_type_name": "H100",
            "environment": "production" if is_prod else None,
        }

    def _environment_json(self, env: FakeEnvironment) -> dict[str, Any]:
        current = self.deployments.get((env.model_id, env.current)) if env.current else None
        candidate = self.deployments.get((env.model_id, env.candidate)) if env.candidate else None
        return {
            "name": env.name,
            "created_at": _now(),
            "model_id": env.model_id,
            "current_deployment": self._deployment_json(current) if current else None,
            "candidate_deployment": self._deployment_json(candidate) if candidate else None,
            "in_progress_promotion": dict(env.promotion) if env.promotion else None,
            "autoscaling_settings": dict(env.autoscaling),
            "promotion_settings": {"redeploy_on_promotion": self.redeploy_on_promotion},
            "instance_type": {"id": "H100", "name": "H100"},
        }

    def _tick_environment(self, env: FakeEnvironment) -> None:
        """One poll's worth of progress for a running promotion and a pending settings update."""
        if env.promotion and env.promotion["status"] not in ("SUCCEEDED", "FAILED", "CANCELED"):
            env.polls_left -= 1
            if env.polls_left <= 0:
                if env.outcome == "SUCCEEDED":
                    previous = self.deployments.get((env.model_id, env.current or ""))
                    env.current = env.candidate
                    env.promotion = None
                    if previous is not None and env.scale_down_previous:
                        previous.set_status("SCALED_TO_ZERO")
                else:
                    env.promotion = {
                        "status": env.outcome,
                        "percent_traffic_to_new_version": 0,
                        "error_message": self.promotion_error,
                    }
                env.candidate = None
            else:
                env.promotion["status"] = "RAMPING_UP"
                env.promotion["percent_traffic_to_new_version"] = 50
        if env.pending_autoscaling is not None:
            env.autoscaling_polls_left -= 1
            if env.autoscaling_polls_left <= 0:
                env.autoscaling.update(env.pending_autoscaling)
                env.pending_autoscaling = None

    def handle(self, method: str, path: str, body: Any) -> tuple[int, dict[str, str], Any]:
        for i, inj in enumerate(self.injected):
            if (inj.method is None or inj.method == method) and (
                inj.path_contains is None or inj.path_contains in path
            ):
                del self.injected[i]
                return inj.status, inj.headers, inj.body
        for route_method, template, regex in _COMPILED:
            match = regex.match(path)
            if match and route_method == method:
                return getattr(self, _HANDLERS[(route_method, template)])(body, **match.groupdict())
        return 404, {}, {"error": f"no route {method} {path}"}

    def _get_deployment(self, body: Any, model_id: str, deployment_id: str):
        dep = self.deployments.get((model_id, deployment_id))
        if dep is None:
            return 404, {}, {"error": "deployment not found"}
        payload = self._deployment_json(dep)
        dep.advance()
        return 200, {}, payload

    def _promote(self, body: Any, model_id: str, env_name: str):
        schema = SCHEMAS["PromoteToEnvironmentRequestV1"]
        if not isinstance(body, dict) or set(body) - set(schema) or "deployment_id" not in body:
            return 400, {}, {"error": f"invalid promote body {body!r}"}
        deployment_id = body["deployment_id"]
        dep = self.deployments.get((model_id, deployment_id))
        if dep is None:
            return 404, {}, {"error": "deployment not found"}
        if dep.status not in ("ACTIVE", "SCALED_TO_ZERO"):
            return 400, {}, {"error": f"cannot promote a deployment that is {dep.status}"}
        env = self.environments.setdefault(
            (model_id, env_name), FakeEnvironment(model_id, env_name)
        )
        running = (env.promotion or {}).get("status") not in (
            None,
            "SUCCEEDED",
            "FAILED",
            "CANCELED",
        )
        if running:
            return 409, {}, {"error": "a promotion is already in progress"}
        target = deployment_id
        if self.redeploy_on_promotion:
            target = f"{deployment_id}-copy"
            self.deployments[(model_id, target)] = FakeDeployment(model_id, target)
        env.candidate = target
        env.promotion = {"status": "RELEASING", "percent_traffic_to_new_version": 0}
        env.polls_left = self.promotion_polls
        env.outcome = self.promotion_outcome
        env.scale_down_previous = bool(body.get("scale_down_previous_deployment", True))
        return 200, {}, self._deployment_json(self.deployments[(model_id, target)])

    def _get_environment(self, body: Any, model_id: str, env_name: str):
        env = self.environments.get((model_id, env_name))
        if env is None:
            return 404, {}, {"error": "Model hasn't been deployed yet. No environments exist."}
        payload = self._environment_json(env)
        self._tick_environment(env)
        return 200, {}, payload

    def _patch_environment(self, body: Any, model_id: str, env_name: str):
        if not isinstance(body, dict) or set(body) - set(SCHEMAS["UpdateEnvironmentRequestV1"]):
            return 400, {}, {"error": f"invalid environment update {body!r}"}
        settings = body.get("autoscaling_settings") or {}
        unknown = set(settings) - set(SCHEMAS["UpdateAutoscalingSettingsV1"])
        if unknown:  # additionalProperties: false in the spec
            return 400, {}, {"error": f"unknown autoscaling fields {sorted(unknown)}"}
        env = self.environments.get((model_id, env_name))
        if env is None:
            return 404, {}, {"error": "environment not found"}
        if all(env.autoscaling.get(k) == v for k, v in settings.items()):
            return 200, {}, {"status": "UNCHANGED", "message": "settings unchanged"}
        env.pending_autoscaling = dict(settings)
        env.autoscaling_polls_left = self.autoscaling_polls
        return 200, {}, {"status": "ACCEPTED", "message": "settings update accepted"}

    def _list_secrets(self, body: Any):
        return self._secrets_of(self.secrets, "Default Team")

    @staticmethod
    def _secrets_of(names: set[str], team_name: str):
        secrets = [
            {"id": f"s{i}", "created_at": _now(), "name": name, "team_name": team_name}
            for i, name in enumerate(sorted(names))
        ]
        return 200, {}, {"secrets": secrets}

    def _patch_deployment_autoscaling(self, body: Any, model_id: str, deployment_id: str):
        if not isinstance(body, dict) or set(body) - set(SCHEMAS["UpdateAutoscalingSettingsV1"]):
            return 400, {}, {"error": f"invalid autoscaling settings {body!r}"}
        dep = self.deployments.get((model_id, deployment_id))
        if dep is None:
            return 404, {}, {"error": "deployment not found"}
        dep.autoscaling = {**(dep.autoscaling or DEFAULT_AUTOSCALING), **body}
        return 200, {}, {"status": "ACCEPTED", "message": "settings update accepted"}

    def _list_teams(self, body: Any):
        teams = [
            {"id": team_id, "name": name, "default": i == 0, "created_at": _now()}
            for i, (team_id, name) in enumerate(self.teams.items())
        ]
        return 200, {}, {"teams": teams}

    def _list_team_secrets(self, body: Any, team_id: str):
        if team_id not in self.teams:
            return 404, {}, {"error": "team not found"}
        return self._secrets_of(self.team_secrets.get(team_id, set()), self.teams[team_id])

    def _list_models(self, body: Any):
        models = [
            {"id": model_id, "name": name, "created_at": _now(), "deployments_count": 1}
            for model_id, name in self.models.items()
        ]
        return 200, {}, {"models": models}

    def _deactivate(self, body: Any, model_id: str, deployment_id: str):
        dep = self.deployments.get((model_id, deployment_id))
        if dep is None:
            return 404, {}, {"error": "deployment not found"}
        dep.set_status("INACTIVE")
        return 200, {}, {"success": True}


_HANDLERS = {
    ROUTES[0]: "_get_deployment",
    ROUTES[1]: "_promote",
    ROUTES[2]: "_get_environment",
    ROUTES[3]: "_patch_environment",
    ROUTES[4]: "_list_secrets",
    ROUTES[5]: "_patch_deployment_autoscaling",
    ROUTES[6]: "_list_teams",
    ROUTES[7]: "_list_team_secrets",
    ROUTES[8]: "_list_models",
    ROUTES[9]: "_deactivate",
}


class _Handler(BaseHTTPRequestHandler):
    state: FakeBaseten
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._reply(400, {}, {"error": "body is not JSON"})
            return
        path = self.path.split("?", 1)[0]
        auth = self.headers.get("Authorization", "")
        fake = self.state
        with fake.lock:
            fake.requests.append((self.command, path, body))
            if auth not in (f"Api-Key {fake.api_key}", f"Bearer {fake.api_key}"):
                status, headers, payload = 401, {}, {"error": "invalid API key"}
            else:
                status, headers, payload = fake.handle(self.command, path, body)
        self._reply(status, headers, payload)

    def _reply(self, status: int, headers: dict[str, str], payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_PATCH = _serve


# --- inference gateway ----------------------------------------------------------------------

_GATEWAY_PATHS = (
    re.compile(r"^/deployment/(?P<deployment>[^/]+)/websocket$"),
    re.compile(r"^/environments/(?P<environment>[^/]+)/websocket$"),
)


class FakeInferenceGateway:
    """Baseten's model host in miniature: WebSocket paths per deployment/environment, Api-Key auth,
    HTTP 503 at the handshake while "loading", and a relay to a real (local) Truss server.

    ``async with FakeInferenceGateway(upstream_ws_url, api_key) as gw: gw.http_base`` is what a
    ``predict_url`` host looks like (the deploy scripts turn it into ws:// URLs).
    """

    def __init__(
        self, upstream: str, api_key: str, *, host: str = "127.0.0.2", loading_handshakes: int = 0
    ) -> None:
        self.upstream = upstream
        self.api_key = api_key
        self.host = host
        self.loading_handshakes = loading_handshakes
        self.handshakes: list[tuple[str, int]] = []  # (path, HTTP status or 101)
        self._server: Server | None = None
        self.port = 0

    @property
    def http_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> FakeInferenceGateway:
        self._server = await serve(
            self._relay, self.host, 0, process_request=self._check, max_size=None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if not any(p.match(path) for p in _GATEWAY_PATHS):
            status = HTTPStatus.NOT_FOUND
        elif request.headers.get("Authorization") != f"Api-Key {self.api_key}":
            status = HTTPStatus.UNAUTHORIZED
        elif self.loading_handshakes > 0:
            self.loading_handshakes -= 1
            status = HTTPStatus.SERVICE_UNAVAILABLE
        else:
            self.handshakes.append((path, 101))
            return None
        self.handshakes.append((path, int(status)))
        return connection.respond(status, f"{status.phrase}\n")

    async def _relay(self, client: ServerConnection) -> None:
        async with connect(self.upstream, max_size=None) as upstream:

            async def pump(source: Any, sink: Any) -> None:
                try:
                    async for message in source:
                        await sink.send(message)
                except ConnectionClosed:
                    pass
                # pass the close code on: clients see the model's own close code
                await sink.close(source.close_code or 1000, source.close_reason or "")

            tasks = [
                asyncio.create_task(pump(client, upstream)),
                asyncio.create_task(pump(upstream, client)),
            ]
            await asyncio.wait(tasks, return_when=asyncio.ALL_COMPLETED)
