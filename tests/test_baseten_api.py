"""The management API client against the local fake, and both against the published OpenAPI subset."""

from __future__ import annotations

import pytest

from scripts.deploy import baseten_api as api
from tests.fake_baseten import ROUTES, SUBSET, FakeBaseten

MODEL = "m1"


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
    return api.ManagementClient(key or fake.api_key, fake.url, sleep=sleep or SleepRecorder())


def test_fake_routes_exist_in_published_spec():
    spec_paths = SUBSET["paths"]
    for method, template in ROUTES:
        assert method.lower() in spec_paths[template], (method, template)
    # and every endpoint the client calls is served by the fake
    served = {(m, t) for m, t in ROUTES}
    assert {(m.upper(), p) for p, ms in spec_paths.items() for m in ms} == served


def test_status_sets_partition_the_published_enum():
    published = set(SUBSET["schemas"]["DeploymentStatusV1"])
    groups = [
        api.PENDING_STATUSES,
        api.FAILED_STATUSES,
        api.RECOVERABLE_STATUSES,
        {api.ACTIVE_STATUS, api.SCALED_TO_ZERO_STATUS},
    ]
    assert set().union(*groups) == published
    assert sum(len(g) for g in groups) == len(published)  # disjoint


def test_promotion_statuses_and_fields_are_published():
    promotion = set(SUBSET["schemas"]["InProgressPromotionV1"])
    assert {"status", "percent_traffic_to_new_version", "error_message"} <= promotion
    statuses = set(SUBSET["schemas"]["InProgressPromotionStatusV1"])
    assert api.PROMOTION_FAILED_STATUSES | {api.PROMOTION_SUCCEEDED_STATUS} <= statuses
    assert set(api.AUTOSCALING_FIELDS) <= set(SUBSET["schemas"]["UpdateAutoscalingSettingsV1"])


def test_get_deployment_sends_api_key_header_and_follows_statuses(fake):
    fake.add_deployment(MODEL, "d1", ["BUILDING", "LOADING_MODEL", "ACTIVE"])
    seen: list[str] = []
    with client_for(fake) as client:
        dep = client.wait_for_deployment(
            MODEL, "d1", timeout_s=60, poll_interval_s=0, on_status=seen.append
        )
    assert dep["status"] == "ACTIVE"
    assert seen == ["BUILDING", "LOADING_MODEL", "ACTIVE"]
    assert set(SUBSET["schemas"]["DeploymentV1_required"]) <= set(dep)


def test_wait_for_deployment_raises_on_failed_status(fake):
    fake.add_deployment(MODEL, "d1", ["BUILDING", "BUILD_FAILED"])
    with client_for(fake) as client, pytest.raises(api.DeploymentFailedError, match="BUILD_FAILED"):
        client.wait_for_deployment(MODEL, "d1", timeout_s=60, poll_interval_s=0)


def test_wait_for_deployment_times_out(fake):
    fake.add_deployment(MODEL, "d1", ["BUILDING"])
    ticks = iter(range(100))
    with client_for(fake) as client, pytest.raises(api.WaitTimeoutError, match="BUILDING"):
        client.wait_for_deployment(
            MODEL, "d1", timeout_s=3, poll_interval_s=0, clock=lambda: float(next(ticks))
        )


def test_429_honours_retry_after_seconds(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=2, retry_after="7")
    sleep = SleepRecorder()
    with client_for(fake, sleep) as client:
        assert client.get_deployment(MODEL, "d1")["id"] == "d1"
    assert sleep.calls == [7.0, 7.0]


def test_429_without_hint_backs_off_exponentially(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=3)
    sleep = SleepRecorder()
    with client_for(fake, sleep) as client:
        client.get_deployment(MODEL, "d1")
    assert sleep.calls == [1.0, 2.0, 4.0]


def test_429_is_retried_for_post_but_5xx_is_not(fake):
    fake.add_deployment(MODEL, "d1")
    fake.set_production(MODEL, None)
    fake.inject(429, retry_after="0", method="POST")
    with client_for(fake) as client:
        assert client.promote(MODEL, "d1")["id"] == "d1"
    fake.inject(503, method="POST")
    with client_for(fake) as client, pytest.raises(api.BasetenApiError) as info:
        client.promote(MODEL, "d1")
    assert info.value.status_code == 503
    assert len(fake.calls("POST")) == 3  # 429 + retry, then the single 503


def test_retries_give_up_after_max_attempts(fake):
    fake.add_deployment(MODEL, "d1")
    fake.inject(429, times=20, retry_after="0")
    client = api.ManagementClient(fake.api_key, fake.url, sleep=SleepRecorder(), max_attempts=3)
    with client, pytest.raises(api.BasetenApiError, match="HTTP 429"):
        client.get_deployment(MODEL, "d1")
    assert len(fake.calls("GET")) == 3


def test_wrong_key_is_a_clear_401_without_echoing_the_key(fake):
    fake.add_deployment(MODEL, "d1")
    with (
        client_for(fake, key="wrong-secret-key") as client,
        pytest.raises(api.BasetenApiError) as info,
    ):
        client.get_deployment(MODEL, "d1")
    assert info.value.status_code == 401
    assert "wrong-secret-key" not in str(info.value)


def test_env_settings():
    assert api.api_base_url({}) == "https://api.baseten.co"
    assert api.api_base_url({"BASETEN_API_URL": "http://127.0.0.1:9/"}) == "http://127.0.0.1:9"
    with pytest.raises(api.ConfigError, match="BASETEN_API_KEY"):
        api.api_key_from_env({})
    assert api.api_key_from_env({"BASETEN_API_KEY": " k "}) == "k"


def test_websocket_urls_from_predict_url():
    base = api.websocket_base("https://model-abc.api.baseten.co/deployment/q1/predict")
    assert base == "wss://model-abc.api.baseten.co"
    assert (
        api.deployment_ws_url(base, "q1")
        == "wss://model-abc.api.baseten.co/deployment/q1/websocket"
    )
    assert (
        api.environment_ws_url(base)
        == "wss://model-abc.api.baseten.co/environments/production/websocket"
    )
    assert api.websocket_base("http://127.0.0.1:8080/x") == "ws://127.0.0.1:8080"
    with pytest.raises(ValueError):
        api.websocket_base("ftp://x")


def test_redact():
    assert api.redact("key abc in abc", "abc") == "key *** in ***"
    assert api.redact("nothing", "") == "nothing"


def test_list_secret_names(fake):
    fake.secrets = {"hf_access_token", "other"}
    with client_for(fake) as client:
        assert client.list_secret_names() == {"hf_access_token", "other"}
    assert set(SUBSET["schemas"]["SecretV1"]) >= {"name"}


def test_team_secrets_come_from_the_team_scoped_endpoint(fake):
    fake.secrets = {"workspace_only"}
    fake.teams = {"t-1": "Default Team", "t-2": "Speech"}
    fake.team_secrets = {"t-2": {"hf_access_token"}}
    with client_for(fake) as client:
        assert client.list_secret_names(team="Speech") == {"hf_access_token"}
        assert client.list_secret_names(team="t-2") == {"hf_access_token"}  # an id works too
        with pytest.raises(api.ConfigError, match="no team 'Nope'.*Default Team, Speech"):
            client.list_secret_names(team="Nope")
    paths = [path for _, path, _ in fake.calls("GET")]
    assert "/v1/teams/t-2/secrets" in paths and "/v1/secrets" not in paths
    assert set(SUBSET["schemas"]["TeamV1_required"]) >= {"id", "name"}


def test_unhealthy_is_waited_out_until_active(fake):
    fake.add_deployment(MODEL, "d1", ["LOADING_MODEL", "UNHEALTHY", "UNHEALTHY", "ACTIVE"])
    seen: list[str] = []
    with client_for(fake) as client:
        dep = client.wait_for_deployment(
            MODEL, "d1", timeout_s=60, poll_interval_s=0, on_status=seen.append
        )
    assert dep["status"] == "ACTIVE" and seen == ["LOADING_MODEL", "UNHEALTHY", "ACTIVE"]


def test_deployment_autoscaling_update(fake):
    fake.add_deployment(MODEL, "d1")
    with client_for(fake) as client:
        answer = client.update_deployment_autoscaling(MODEL, "d1", {"min_replica": 0})
    assert answer["status"] == "ACCEPTED"
    assert fake.deployments[(MODEL, "d1")].autoscaling["min_replica"] == 0


def test_list_models_and_deactivate(fake):
    fake.models = {MODEL: "whisper-streaming"}
    fake.add_deployment(MODEL, "d1")
    with client_for(fake) as client:
        assert [m["name"] for m in client.list_models()] == ["whisper-streaming"]
        client.deactivate(MODEL, "d1")
    assert fake.deployments[(MODEL, "d1")].status == "INACTIVE"


def test_poll_until_returns_the_answer_or_times_out():
    answers = iter([None, None, "done"])
    assert (
        api.poll_until(
            lambda: next(answers),
            timeout_s=9,
            interval_s=0,
            timeout_message=lambda: "x",
            sleep=lambda s: None,
        )
        == "done"
    )
    ticks = iter(range(10))
    with pytest.raises(api.WaitTimeoutError, match="late"):
        api.poll_until(lambda: None, timeout_s=2, interval_s=1, timeout_message=lambda: "late",
                       sleep=lambda s: None, clock=lambda: float(next(ticks)))  # fmt: skip
