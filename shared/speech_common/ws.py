"""WebSocket edge helpers shared by both trusses: close codes and typed error frames."""

from __future__ import annotations

import json
import logging
from enum import IntEnum
from typing import Any, Literal

from pydantic import BaseModel

logger = logging.getLogger(__name__)

# Truss passes a close reason through only up to 123 bytes; a longer one breaks the close (1006).
MAX_CLOSE_REASON_BYTES = 123
# JSON nesting deeper than any valid frame of either protocol (3 levels): refused before
# json.loads recurses (a RecursionError would be a 1011, not a typed 1008).
MAX_JSON_DEPTH = 32
# A client refused for a full replica may retry this soon (autoscaling adds replicas meanwhile).
SESSION_CAP_RETRY_AFTER_S = 5.0


class CloseCode(IntEnum):
    NORMAL = 1000
    UNSUPPORTED_DATA = 1003
    POLICY_VIOLATION = 1008  # bad data from the client
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # overloaded


class ErrorBody(BaseModel):
    error_type: str
    message: str
    recoverable: bool = False
    retry_after_s: float | None = None  # overloaded (1013): when a retry may succeed


class ErrorFrame(BaseModel):
    type: Literal["error"] = "error"
    body: ErrorBody


class ProtocolError(Exception):
    """A client error that ends the session with an error frame and a close code."""

    def __init__(
        self,
        error_type: str,
        message: str,
        close_code: CloseCode = CloseCode.POLICY_VIOLATION,
        retry_after_s: float | None = None,
        recoverable: bool = False,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.close_code = close_code
        self.retry_after_s = retry_after_s
        self.recoverable = recoverable  # an error frame only: the session goes on

    def frame(self) -> dict[str, Any]:
        body = ErrorBody(
            error_type=self.error_type,
            message=self.message,
            retry_after_s=self.retry_after_s,
            recoverable=self.recoverable,
        )
        # Published clients know error_type/message/recoverable: the hint only when there is one.
        return ErrorFrame(body=body).model_dump(exclude_none=True)


def describe_validation_error(exc: Any, root: str, limit: int | None = None) -> str:
    """A pydantic ValidationError as one line per field ('max_tokens: Input should be ...'),
    for a typed error frame; ``root`` names an error of the whole frame."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:limit]:
        location = ".".join(str(part) for part in error["loc"]) or root
        parts.append(f"{location}: {error['msg']}")
    return "; ".join(parts)


def truncate_reason(reason: str) -> str:
    """Cut a close reason to what the WebSocket close frame can carry (whole UTF-8 characters)."""
    # errors="replace": a lone surrogate (JSON "\\ud800" in a client's key) would raise here.
    encoded = reason.encode(errors="replace")[:MAX_CLOSE_REASON_BYTES]
    return encoded.decode(errors="ignore")


async def send_error_and_close(websocket: Any, error: ProtocolError) -> None:
    """Best effort: the typed error frame, then the close code. A gone client is not an error."""
    try:
        await websocket.send_json(error.frame())
    except Exception:  # client already gone
        logger.debug("could not send error frame %s", error.error_type)
    await safe_close(websocket, error.close_code, error.message)


async def safe_close(websocket: Any, code: int = CloseCode.NORMAL, reason: str = "") -> None:
    """Close once; ignore a socket that is already closed."""
    try:
        await websocket.close(code=int(code), reason=truncate_reason(reason))
    except Exception:
        logger.debug("close(%s) on a closed socket", code)


class SessionGate:
    """Counts open sessions of one replica so an overloaded one refuses new sessions (1013).

    All sessions share the Truss server's one event loop, so no lock is needed.
    """

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.active = 0

    def try_enter(self) -> bool:
        if self.active >= self.max_sessions:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1

    def full_error(self) -> ProtocolError:
        return ProtocolError(
            "overloaded",
            "too many sessions; retry later",
            CloseCode.TRY_AGAIN_LATER,
            retry_after_s=SESSION_CAP_RETRY_AFTER_S,
        )


def check_json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse nesting deeper than ``limit`` without parsing (json.loads would recurse)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise ValueError(f"JSON nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def load_json(text: str) -> Any:
    """json.loads that fails with ValueError only (deep nesting, 4,300-digit integers...)."""
    check_json_depth(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(exc.msg) from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
