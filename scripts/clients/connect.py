"""How every client here connects: the one WebSocket library (``websockets``), its handshake
retry, and the one HTTP client (``httpx``), with the same API-key and proxy rule for both.

Baseten answers HTTP 503 at the handshake while a deployment loads or wakes from zero (GPU cold
starts take minutes); 502 and 504 are the gateway's own transient answers. Those are retried
with exponential backoff until a budget runs out; any other status fails at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from scripts.clients.auth import api_key_headers, is_local

logger = logging.getLogger(__name__)

RETRY_HANDSHAKE_STATUSES = frozenset({502, 503, 504})
DEFAULT_CONNECT_BUDGET_S = 15 * 60.0  # a cold start from zero replicas, with margin
HANDSHAKE_BACKOFF_START_S = 2.0
HANDSHAKE_BACKOFF_MAX_S = 30.0
OPEN_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 300.0  # a whole spoken answer in one response


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


async def open_websocket(
    url: str,
    api_key: str | None = None,
    *,
    budget_s: float = DEFAULT_CONNECT_BUDGET_S,
    backoff_s: float = HANDSHAKE_BACKOFF_START_S,
    handshake: Handshake | None = None,
    compression: str | None = "deflate",
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ClientConnection:
    """A connection with the API-key header for remote hosts; a retryable handshake status is
    retried within ``budget_s`` (doubling the wait from ``backoff_s``), any other raises
    ``HandshakeRejected``. Errors without an HTTP status (refused, timed out) propagate.

    ``compression=None`` declines permessage-deflate (the TTS clients: PCM does not compress,
    and the published TTS client does not offer it)."""
    handshake = handshake if handshake is not None else Handshake()
    started = time.monotonic()
    deadline = started + budget_s
    delay = backoff_s
    while True:
        handshake.attempts += 1
        try:
            ws = await connect(
                url,
                additional_headers=api_key_headers(url, api_key),
                open_timeout=OPEN_TIMEOUT_S,
                max_size=None,
                compression=compression,
                proxy=None if is_local(url) else True,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            retryable = status in RETRY_HANDSHAKE_STATUSES
            remaining = deadline - time.monotonic()
            if not retryable or remaining <= 0:
                raise HandshakeRejected(status, handshake.attempts, budget_s, retryable) from None
            logger.info("handshake HTTP %d (loading?); retrying in %.1f s", status, delay)
            await sleep(min(delay, remaining))
            delay = min(delay * 2, HANDSHAKE_BACKOFF_MAX_S)
            continue
        handshake.connect_s = round(time.monotonic() - started, 3)
        return ws


def http_client(
    url: str, api_key: str | None = None, *, timeout_s: float = HTTP_TIMEOUT_S
) -> httpx.AsyncClient:
    """An HTTP client for ``url``'s host: the API-key header for remote hosts, and, as for the
    WebSockets, the environment's proxy for remote hosts only; redirects are followed (the
    Truss server's ``/metrics`` answers with one)."""
    return httpx.AsyncClient(
        headers=api_key_headers(url, api_key),
        timeout=timeout_s,
        trust_env=not is_local(url),
        follow_redirects=True,
    )
