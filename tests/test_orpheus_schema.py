"""The session's first frame: Baseten-compatible keys, strict validation, typed errors."""

from __future__ import annotations

import json

import pytest

from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
from orpheus_tts.schema import (
    MAX_CONFIG_FRAME_CHARS,
    MAX_TOKENS_LIMIT,
    SessionConfig,
    parse_session_config,
)
from speech_common.ws import CloseCode, ProtocolError


def _parse(obj: object) -> SessionConfig:
    raw = obj if isinstance(obj, str) else json.dumps(obj)
    return parse_session_config(raw, VOICES, DEFAULT_VOICE)


def test_baseten_client_frame() -> None:
    config = _parse({"voice": "tara", "max_tokens": 2000, "buffer_size": 10})
    assert (config.voice, config.max_tokens, config.buffer_size) == ("tara", 2000, 10)
    assert config.sampling_overrides() == {}


def test_defaults_and_sampling_overrides() -> None:
    config = _parse({"temperature": 0.7, "top_p": 1, "repetition_penalty": 1.1})
    assert config.voice == DEFAULT_VOICE
    assert config.sampling_overrides() == {
        "temperature": 0.7,
        "top_p": 1.0,
        "repetition_penalty": 1.1,
    }


def test_voice_is_normalised() -> None:
    assert _parse({"voice": " Leo "}).voice == "leo"


@pytest.mark.parametrize(
    ("frame", "error_type", "fragment"),
    [
        ("not json", "invalid_json", "not JSON"),
        ("[1, 2]", "invalid_config", "JSON object"),
        ({"voice": "bob"}, "invalid_config", "unknown voice"),
        ({"voice": ""}, "invalid_config", "voice"),
        ({"max_tokens": "2000"}, "invalid_config", "max_tokens"),
        ({"max_tokens": 0}, "invalid_config", "max_tokens"),
        ({"max_tokens": MAX_TOKENS_LIMIT + 1}, "invalid_config", "max_tokens"),
        ({"max_tokens": True}, "invalid_config", "max_tokens"),
        ({"buffer_size": 0}, "invalid_config", "buffer_size"),
        ({"buffer_size": 2.5}, "invalid_config", "buffer_size"),
        ({"temperature": "hot"}, "invalid_config", "temperature"),
        ({"temperature": 0}, "invalid_config", "temperature"),
        ({"top_p": 1.5}, "invalid_config", "top_p"),
        ({"repetition_penalty": 0.9}, "invalid_config", "repetition_penalty"),
        ('{"temperature": NaN}', "invalid_config", "temperature"),
        ({"temprature": 0.5}, "invalid_config", "temprature"),
        ("x" * (MAX_CONFIG_FRAME_CHARS + 1), "frame_too_large", "config frame"),
        # Deep nesting within the size limit: json.loads would raise RecursionError (a 1011).
        ("[" * 2000 + "]" * 2000, "invalid_json", "nested deeper"),
        ('{"voice": ' + "[" * 40 + "]" * 40 + "}", "invalid_json", "nested deeper"),
    ],
)
def test_bad_frames_raise_typed_errors(frame: object, error_type: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        _parse(frame)
    assert info.value.error_type == error_type
    assert fragment in info.value.message
    assert info.value.close_code == CloseCode.POLICY_VIOLATION
    body = info.value.frame()
    assert body["type"] == "error" and body["body"]["error_type"] == error_type


@pytest.mark.parametrize("raw", [b'{"voice": "tara"}', None])
def test_binary_or_missing_config_frame(raw: bytes | None) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_session_config(raw, VOICES, DEFAULT_VOICE)
    assert info.value.error_type == "invalid_config"


# -- docs/tts.md's protocol tables against the schema -------------------------------------------
def _readme_rows() -> dict[str, str]:
    """First cell -> the whole row, for every table row of docs/tts.md's opt-in protocol section."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "tts.md").read_text()
    start = readme.index("## Opt-in: formats and the event protocol")
    section = readme[start : readme.index("\n## ", start + 1)]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| `"):
            first = line.split("|")[1].strip()
            rows[first.split("`")[1]] = line
    return rows


def test_readme_documents_every_message_and_field() -> None:
    import typing

    from orpheus_tts.audio_format import SUPPORTED_RATES_HZ, AudioFormat
    from orpheus_tts.schema import ControlMessage, ServerEvent

    rows = _readme_rows()
    for model in (*typing.get_args(ControlMessage), *typing.get_args(ServerEvent)):
        (kind,) = typing.get_args(model.model_fields["type"].annotation)  # Literal["flush"]
        assert kind in rows, f"docs/tts.md has no row for {kind!r}"
        for name in model.model_fields:
            if name != "type":
                assert f"`{name}`" in rows[kind], f"docs/tts.md's {kind!r} row lacks {name!r}"
    opt_in = {
        "events",
        "response_format",
        "sample_rate",
        "segment",
        "max_chunk_chars",
        "volume_db",
        "word_timestamps",
    }
    assert opt_in <= set(SessionConfig.model_fields) and opt_in <= set(rows)
    assert all(f"`{f.value}`" in rows["response_format"] for f in AudioFormat)
    assert all(str(rate) in rows["sample_rate"] for rate in SUPPORTED_RATES_HZ)
    assert "error" in rows and "`recoverable`" in rows["error"]
