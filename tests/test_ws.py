"""speech_common.ws: close reasons, error frames, best-effort error-and-close."""

from __future__ import annotations

import json
from typing import Any

import pytest

from speech_common.ws import (
    MAX_CLOSE_REASON_BYTES,
    CloseCode,
    ErrorFrame,
    ProtocolError,
    safe_close,
    send_error_and_close,
    truncate_reason,
)


class FakeWebSocket:
    """Records sends and closes; can be told to fail either."""

    def __init__(self, fail_send: bool = False, fail_close: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_send = fail_send
        self.fail_close = fail_close

    async def send_json(self, data: Any) -> None:
        if self.fail_send:
            raise RuntimeError("client gone")
        json.dumps(data)  # what goes on the wire must be JSON
        self.calls.append(("send", data))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.fail_close:
            raise RuntimeError("already closed")
        assert isinstance(code, int)
        assert len(reason.encode()) <= MAX_CLOSE_REASON_BYTES
        self.calls.append(("close", (code, reason)))


# -- truncate_reason ----------------------------------------------------------------------------
def test_short_reason_unchanged() -> None:
    assert truncate_reason("bad metadata") == "bad metadata"
    assert truncate_reason("") == ""


def test_ascii_cut_at_limit() -> None:
    out = truncate_reason("x" * 500)
    assert out == "x" * MAX_CLOSE_REASON_BYTES


@pytest.mark.parametrize("char", ["é", "€", "𝄞", "日"])  # 2, 3, 4, 3 bytes
@pytest.mark.parametrize("prefix", range(4))
def test_multibyte_never_split(char: str, prefix: int) -> None:
    reason = "a" * prefix + char * 100
    out = truncate_reason(reason)
    encoded = out.encode()
    assert len(encoded) <= MAX_CLOSE_REASON_BYTES
    assert len(encoded) > MAX_CLOSE_REASON_BYTES - len(char.encode())  # nothing more lost
    assert reason.startswith(out)


def test_unencodable_reason_does_not_raise() -> None:
    # A lone surrogate (json.loads('"\\ud800"') yields one) may end up in an error message.
    out = truncate_reason("bad key \ud800 in metadata")
    out.encode()  # valid UTF-8 now
    assert out.startswith("bad key ")
    assert len(out.encode()) <= MAX_CLOSE_REASON_BYTES


# -- ProtocolError ------------------------------------------------------------------------------
def test_protocol_error_frame_shape() -> None:
    err = ProtocolError("invalid_metadata", "threshold: too big")
    assert err.close_code == CloseCode.POLICY_VIOLATION == 1008
    assert str(err) == "threshold: too big"
    frame = err.frame()
    assert frame == {
        "type": "error",
        "body": {
            "error_type": "invalid_metadata",
            "message": "threshold: too big",
            "recoverable": False,
        },
    }
    assert ErrorFrame.model_validate(frame).body.error_type == "invalid_metadata"
    json.dumps(frame)


def test_close_codes() -> None:
    assert [int(c) for c in CloseCode] == [1000, 1003, 1008, 1009, 1011, 1013]


# -- send_error_and_close / safe_close ------------------------------------------------------------
async def test_send_error_then_close_with_code() -> None:
    ws = FakeWebSocket()
    err = ProtocolError("overloaded", "try later", CloseCode.TRY_AGAIN_LATER)
    await send_error_and_close(ws, err)
    assert ws.calls == [("send", err.frame()), ("close", (1013, "try later"))]


async def test_long_message_is_truncated_in_close_not_in_frame() -> None:
    ws = FakeWebSocket()
    message = "é" * 200
    await send_error_and_close(ws, ProtocolError("invalid_metadata", message))
    (_, frame), (_, (code, reason)) = ws.calls
    assert frame["body"]["message"] == message
    assert code == 1008 and reason == truncate_reason(message)


async def test_survives_a_socket_that_raises_on_send() -> None:
    ws = FakeWebSocket(fail_send=True)
    await send_error_and_close(ws, ProtocolError("x", "y"))
    assert ws.calls == [("close", (1008, "y"))]  # still closes


async def test_survives_a_socket_that_raises_on_both() -> None:
    ws = FakeWebSocket(fail_send=True, fail_close=True)
    await send_error_and_close(ws, ProtocolError("x", "y"))
    assert ws.calls == []


async def test_close_happens_even_with_an_unencodable_message() -> None:
    ws = FakeWebSocket()
    await send_error_and_close(ws, ProtocolError("invalid_metadata", "bad key '\udcff'"))
    assert ws.calls[-1][0] == "close" and ws.calls[-1][1][0] == 1008


async def test_safe_close_defaults_to_normal() -> None:
    ws = FakeWebSocket()
    await safe_close(ws)
    assert ws.calls == [("close", (1000, ""))]
    await safe_close(FakeWebSocket(fail_close=True))  # no exception
