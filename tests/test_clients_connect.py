"""scripts/clients/connect.py: the one handshake retry, for any WebSocket library."""

from __future__ import annotations

import pytest

from scripts.clients.connect import Handshake, HandshakeRejected, retry_handshake


class Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def opener(statuses: list[int]):
    """Fails with each status in turn, then opens."""
    pending = list(statuses)

    async def open_once() -> str:
        if pending:
            raise Refused(pending.pop(0))
        return "socket"

    return open_once


def status_of(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, Refused) else None


async def no_sleep(_s: float) -> None:
    return None


async def test_loading_statuses_are_retried_with_doubling_backoff() -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    handshake = Handshake()
    got = await retry_handshake(opener([503, 502, 504, 503]), status_of, budget_s=600,
                                backoff_s=1, handshake=handshake, sleep=sleep)  # fmt: skip
    assert got == "socket" and handshake.attempts == 5
    assert slept == [1, 2, 4, 8]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
async def test_other_statuses_fail_at_once(status: int) -> None:
    with pytest.raises(HandshakeRejected) as err:
        await retry_handshake(opener([status, 503]), status_of, budget_s=600, sleep=no_sleep)
    assert err.value.status == status and err.value.attempts == 1 and not err.value.not_ready
    assert ("check BASETEN_API_KEY" in str(err.value)) == (status in (401, 403))


async def test_not_ready_past_the_budget() -> None:
    with pytest.raises(HandshakeRejected, match="did not become ready") as err:
        await retry_handshake(opener([503] * 100), status_of, budget_s=0, sleep=no_sleep)
    assert err.value.not_ready and err.value.attempts == 1


async def test_errors_without_a_status_propagate() -> None:
    async def broken() -> str:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(ConnectionRefusedError):
        await retry_handshake(broken, status_of, sleep=no_sleep)


async def test_the_aiohttp_tts_client_retries_through_it() -> None:
    """The TTS client (aiohttp) and the STT client (websockets) share the loop."""
    from scripts.clients.tts import stream_tts
    from scripts.deploy.smoke_test import DEFAULT_TTS_TEXT
    from tests.test_smoke_test import ONE_SECOND_PCM, tts_handler, ws_server

    async with ws_server(tts_handler(ONE_SECOND_PCM), reject=[503, 503]) as (url, headers):
        result = await stream_tts(url, DEFAULT_TTS_TEXT, config={}, handshake_backoff_s=0.01)
    assert result.handshake.attempts == 3 and len(headers) == 3
    assert len(result.pcm) == len(ONE_SECOND_PCM) and result.close_code == 1000
