"""scripts/clients/connect.py: the one handshake retry (``websockets``) and the HTTP client,
against a local WebSocket server that answers the first handshakes with HTTP statuses."""

from __future__ import annotations

import pytest

from scripts.clients.connect import Handshake, HandshakeRejected, http_client, open_websocket
from tests.test_smoke_test import ONE_SECOND_PCM, tts_handler, ws_server


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


async def no_sleep(_s: float) -> None:
    return None


async def test_loading_statuses_are_retried_with_doubling_backoff() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    handshake = Handshake()
    async with ws_server(echo, reject=[503, 502, 504, 503]) as (url, headers):
        ws = await open_websocket(url, budget_s=600, backoff_s=1, handshake=handshake, sleep=sleep)
        async with ws:
            await ws.send("still there?")
            assert await ws.recv() == "still there?"
    assert handshake.attempts == 5 and len(headers) == 5
    assert slept == [1, 2, 4, 8]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
async def test_other_statuses_fail_at_once(status: int) -> None:
    async with ws_server(echo, reject=[status, 503]) as (url, headers):
        with pytest.raises(HandshakeRejected) as err:
            await open_websocket(url, budget_s=600, sleep=no_sleep)
    assert err.value.status == status and err.value.attempts == 1 and not err.value.not_ready
    assert ("check BASETEN_API_KEY" in str(err.value)) == (status in (401, 403))
    assert len(headers) == 1


async def test_not_ready_past_the_budget() -> None:
    async with ws_server(echo, reject=[503] * 100) as (url, _):
        with pytest.raises(HandshakeRejected, match="did not become ready") as err:
            await open_websocket(url, budget_s=0, sleep=no_sleep)
    assert err.value.not_ready and err.value.attempts == 1


async def test_errors_without_a_status_propagate() -> None:
    with pytest.raises(OSError):  # nothing listens on the discard port
        await open_websocket("ws://127.0.0.1:9/v1/websocket", sleep=no_sleep)


async def test_the_api_key_goes_to_remote_hosts_only(monkeypatch) -> None:
    """127.0.0.2 stands in for a remote host (as tests/fake_baseten.py's gateway does)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for host, expected in (("127.0.0.1", None), ("127.0.0.2", "Api-Key k")):
        async with ws_server(echo, host=host) as (url, headers):
            async with await open_websocket(url, "k"):
                pass
        assert headers[0].get("authorization") == expected
    assert "authorization" not in http_client("http://127.0.0.1:1/x", "k").headers
    assert http_client("https://model-x.api.baseten.co/x", "k").headers["authorization"] == (
        "Api-Key k"
    )


async def test_the_tts_client_retries_through_it() -> None:
    """The TTS client opens its socket through the same retry as the STT client."""
    from scripts.clients.tts import stream_tts
    from scripts.deploy.smoke_test import DEFAULT_TTS_TEXT

    async with ws_server(tts_handler(ONE_SECOND_PCM), reject=[503, 503]) as (url, headers):
        result = await stream_tts(url, DEFAULT_TTS_TEXT, config={}, handshake_backoff_s=0.01)
    assert result.handshake.attempts == 3 and len(headers) == 3
    assert len(result.pcm) == len(ONE_SECOND_PCM) and result.close_code == 1000
