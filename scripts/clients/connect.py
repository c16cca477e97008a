"""Opening a speech WebSocket: the one handshake retry every client uses.

Baseten answers HTTP 503 at the handshake while a deployment loads or wakes from zero (GPU cold
starts take minutes); 502 and 504 are the gateway's own transient answers. Those are retried
with exponential backoff until a budget runs out; any other status fails at once. The loop does
not care which WebSocket library opened the socket: ``status_of`` reads the handshake's HTTP
status from that library's exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from scripts.clients.auth import api_key_headers, is_local

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_HANDSHAKE_STATUSES = frozenset({502, 503, 504})
DEFAULT_CONNECT_BUDGET_S = 15 * 60.0  # a cold start from zero replicas, with margin
HANDSHAKE_BACKOFF_START_S = 2.0
HANDSHAKE_BACKOFF_MAX_S = 30.0
OPEN_TIMEOUT_S = 30.0


class HandshakeRejected(Exception):
    """The handshake failed with an HTTP status: one not worth retrying, or a retryable one
    that lasted past the budget (``not_ready``)."""

    def __init__(self, status: int, attempts: int, budget_s: float, not_ready: bool) -> None:
        self.status = status
        self.attempts = attempts
        self.not_ready = not_ready
        if not_ready:
            message = (
                f"still HTTP {status} at the handshake after {attempts} attempts "
                f"({budget_s:.0f} s): the deployment did not become ready"
            )
        else:
            hint = " (check BASETEN_API_KEY)" if status in (401, 403) else ""
            message = f"handshake rejected with HTTP {status}{hint}"
        super().__init__(message)


@dataclass
class Handshake:
    """How opening went: attempts made and seconds until the socket was open."""

    attempts: int = 0
    connect_s: float = 0.0


async def retry_handshake(
    open_once: Callable[[], Awaitable[T]],
    status_of: Callable[[BaseException], int | None],
    *,
    budget_s: float = DEFAULT_CONNECT_BUDGET_S,
    backoff_s: float = HANDSHAKE_BACKOFF_START_S,
    handshake: Handshake | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``open_once()`` until it succeeds; retryable statuses are retried within ``budget_s``.

    An exception without an HTTP status (``status_of`` → None) propagates unchanged."""
    handshake = handshake if handshake is not None else Handshake()
    started = time.monotonic()
    deadline = started + budget_s
    delay = backoff_s
    while True:
        handshake.attempts += 1
        try:
            opened = await open_once()
        except Exception as exc:
            status = status_of(exc)
            if status is None:
                raise
            retryable = status in RETRY_HANDSHAKE_STATUSES
            remaining = deadline - time.monotonic()
            if not retryable or remaining <= 0:
                raise HandshakeRejected(status, handshake.attempts, budget_s, retryable) from None
            logger.info("handshake HTTP %d (loading?); retrying in %.1f s", status, delay)
            await sleep(min(delay, remaining))
            delay = min(delay * 2, HANDSHAKE_BACKOFF_MAX_S)
            continue
        handshake.connect_s = round(time.monotonic() - started, 3)
        return opened


def _websockets_status(exc: BaseException) -> int | None:
    return exc.response.status_code if isinstance(exc, InvalidStatus) else None


async def open_websocket(
    url: str,
    api_key: str | None = None,
    *,
    budget_s: float = DEFAULT_CONNECT_BUDGET_S,
    backoff_s: float = HANDSHAKE_BACKOFF_START_S,
    handshake: Handshake | None = None,
) -> ClientConnection:
    """A ``websockets`` connection with the API-key header for remote hosts, retried while the
    deployment is not ready."""
    return await retry_handshake(
        lambda: connect(
            url,
            additional_headers=api_key_headers(url, api_key),
            open_timeout=OPEN_TIMEOUT_S,
            max_size=None,
            proxy=None if is_local(url) else True,
        ),
        _websockets_status,
        budget_s=budget_s,
        backoff_s=backoff_s,
        handshake=handshake,
    )
