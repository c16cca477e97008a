"""The management API client against the local fake, and both against the published OpenAPI subset."""

from __future__ import annotations

import pytest

from scripts.deploy import baseten_api as api
from scripts.deploy import promote as pr
from tests.fake_baseten import ROUTES, SUBSET, FakeBaseten

MODEL = "m1"
PROMOTE = f"/v1/models/{MODEL}/environments/production/promote"


class SleepRecorder:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def fake():
    with FakeBaseten() as server:
        yield server


def client_for(fake: FakeBaseten, sleep=None, key: str | None = None) -> api.ManagementClient:
    client = api.ManagementClient(key or fake.api_key, fake.url)
    client.sleep = sleep or SleepRecorder()
    return client


def test_fake_routes_exist_in_published_spec():
    spec_paths = SUBSET["paths"]
    for method, template in ROUTES:
        assert method.lower() in spec_paths[template], (method, template)
    # and every endpoint the client calls is served by the fake
    served = {(m, t) for m, t in ROUTES}
    assert {(m.upper(), p) for p, ms in spec_paths.items() for m in ms} == served


def test_status_sets_are_published_and_unhealthy_is_waited_out():
    published = set(SUBSET["schemas"]["DeploymentStatusV1"])
    assert api.READY_STATUSES | api.FAILED_STATUSES <= published
    assert not api.READY_STATUSES & api.FAILED_STATUSES
    # Neither ready nor failed: waited out (truss push --wait gives up at the first UNHEALTHY).
    assert {"UNHEALTHY", "BUILDING", "LOADING_MODEL"} <= published - api.FAILED_STATUSES


def test_promotion_statuses_and_fields_are_published():
    promotion = set(SUBSET["schemas"]["InProgressPromotionV1"])
    assert {"status", "percent_traffic_to_new_version", "error_message"} <= promotion
    statuses = set(SUBSET["schemas"]["InProgressPromotionStatusV1"])
    assert api.PROMOTION_FAILED_STATUSES | {"SUCCEEDED"} <= statuses
    fields = {*pr.AUTOSCALING_REQUIRED, *pr.AUTOSCALING_OPTIONAL}
    assert fields <= set(SUBSET["schemas"]["UpdateAutoscalingSettingsV1"])


def test_get_deployment_sends_api_key_header(fake):
    fake.add_deployment(MODEL, "d1", ["BUILDING"])
    with client_for(fake) as client:
        dep = client.deployment(MODEL, "d1")
    assert dep["status"] == "BUILDING"
    assert set(SUBSET["schemas"]["DeploymentV1_required"]) <= set(dep)
    with (
        client_for(fake, key="wrong-secret-key") as client,
        pytest.raises(api.BasetenApiError) as e,
    ):
        client.deployment(MODEL, "d1")
    assert e.value.status_code == 401 and "wrong-secret-key" not in str(e.value)


def test_production_is_none_before_the_first_deployment(fake):
    with client_for(fake) as client:
        assert client.production(MODEL) is None
    fake.add_deployment(MODEL, "d1")
    fake.set_production(MODEL, "d1")
    with client_for(fake) as client:
        environment = client.production(MODEL)
    assert set(SUBSET["schemas"]["EnvironmentV1_required"]) <= set(environment)
    assert pr.current_id(environment) == "d1"


def test_429_honours_retry_after_seconds(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=2, retry_after="7")
    sleep = SleepRecorder()
    with client_for(fake, sleep) as client:
        assert client.deployment(MODEL, "d1")["id"] == "d1"
    assert sleep.calls == [7.0, 7.0]


def test_429_without_hint_backs_off_exponentially(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=3)
    sleep = SleepRecorder()
    with client_for(fake, sleep) as client:
        client.deployment(MODEL, "d1")
    assert sleep.calls == [1.0, 2.0, 4.0]


def test_429_is_retried_for_post_but_5xx_is_not(fake):
    fake.add_deployment(MODEL, "d1")
    fake.set_production(MODEL, None)
    body = {"deployment_id": "d1"}
    fake.inject(429, retry_after="0", method="POST")
    with client_for(fake) as client:
        assert client.call("POST", PROMOTE, body)["id"] == "d1"
    fake.inject(503, method="POST")
    with client_for(fake) as client, pytest.raises(api.BasetenApiError) as info:
        client.call("POST", PROMOTE, body)
    assert info.value.status_code == 503
    assert len(fake.calls("POST")) == 3  # 429 + retry, then the single 503


def test_retries_give_up_after_max_attempts(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=20, retry_after="0")
    with client_for(fake) as client, pytest.raises(api.BasetenApiError, match="HTTP 429"):
        client.deployment(MODEL, "d1")
    assert len(fake.calls("GET")) == api.MAX_ATTEMPTS


def test_env_settings(monkeypatch):
    monkeypatch.delenv("BASETEN_API_URL", raising=False)
    with api.ManagementClient("k") as client:
        assert str(client.base_url) == "https://api.baseten.co"
    monkeypatch.setenv("BASETEN_API_URL", "http://127.0.0.1:9/")
    with api.ManagementClient("k") as client:
        assert str(client.base_url) == "http://127.0.0.1:9"
    monkeypatch.delenv("BASETEN_API_KEY", raising=False)
    with pytest.raises(api.ConfigError, match="BASETEN_API_KEY"):
        api.api_key_from_env()
    monkeypatch.setenv("BASETEN_API_KEY", " k ")
    assert api.api_key_from_env() == "k"


def test_redact():
    assert api.redact("key abc in abc", "abc") == "key *** in ***"
    assert api.redact("nothing", "") == "nothing"


def test_secret_names_and_models(fake):
    fake.secrets = {"hf_access_token", "other"}
    fake.models = {MODEL: "whisper-streaming"}
    with client_for(fake) as client:
        assert client.secret_names() == {"hf_access_token", "other"}
        assert client.model_ids() == {"whisper-streaming": MODEL}
    assert set(SUBSET["schemas"]["SecretV1"]) >= {"name"}


def test_team_secrets_come_from_the_team_scoped_endpoint(fake):
    fake.secrets = {"workspace_only"}
    fake.teams = {"t-1": "Default Team", "t-2": "Speech"}
    fake.team_secrets = {"t-2": {"hf_access_token"}}
    with client_for(fake) as client:
        assert client.secret_names(team="Speech") == {"hf_access_token"}
        assert client.secret_names(team="t-2") == {"hf_access_token"}  # an id works too
        with pytest.raises(api.ConfigError, match="no team 'Nope'.*Default Team, Speech"):
            client.secret_names(team="Nope")
    paths = [path for _, path, _ in fake.calls("GET")]
    assert "/v1/teams/t-2/secrets" in paths and "/v1/secrets" not in paths
    assert set(SUBSET["schemas"]["TeamV1_required"]) >= {"id", "name"}


def test_poll_returns_the_answer_or_times_out(fake):
    answers = iter([None, None, "done"])
    sleep = SleepRecorder()
    with client_for(fake, sleep) as client:
        client.poll_interval_s = 3
        assert client.poll(lambda: next(answers), 60, "x") == "done"
        assert sleep.calls == [3, 3]
        with pytest.raises(api.WaitTimeoutError, match="late"):
            client.poll(lambda: None, 0, "late")
