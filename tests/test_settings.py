"""speech_common.settings.resolve: model_metadata defaults, env overrides coerced to the default's type."""

from __future__ import annotations

import pytest

from speech_common.settings import resolve

DEFAULTS = {
    "whisper_model": "large-v3-turbo",
    "speculative_finals": True,
    "max_sessions": 20,
    "vad_threshold": 0.5,
    "languages": ["en", "de"],
    "limits": {"a": 1},
    "nothing": None,
}


def test_no_env_returns_a_copy_of_the_defaults() -> None:
    out = resolve(DEFAULTS, {})
    assert out == DEFAULTS
    out["max_sessions"] = 1
    assert DEFAULTS["max_sessions"] == 20


def test_none_metadata_is_empty() -> None:
    assert resolve(None, {"WHISPER_MODEL": "tiny"}) == {}


def test_env_var_is_the_upper_case_key() -> None:
    out = resolve(DEFAULTS, {"WHISPER_MODEL": "tiny", "whisper_model": "ignored", "OTHER": "x"})
    assert out["whisper_model"] == "tiny"
    assert "OTHER" not in out and "other" not in out


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_SESSIONS", "3")
    assert resolve(DEFAULTS)["max_sessions"] == 3


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_bool_coercion(raw: str, value: bool) -> None:
    out = resolve(DEFAULTS, {"SPECULATIVE_FINALS": raw})
    assert out["speculative_finals"] is value


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "enabled"])
def test_bad_bool_raises_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="SPECULATIVE_FINALS"):
        resolve(DEFAULTS, {"SPECULATIVE_FINALS": raw})


def test_int_float_coercion() -> None:
    out = resolve(DEFAULTS, {"MAX_SESSIONS": "8", "VAD_THRESHOLD": "0.25"})
    assert out["max_sessions"] == 8 and type(out["max_sessions"]) is int
    assert out["vad_threshold"] == 0.25 and type(out["vad_threshold"]) is float
    # An int literal for a float default is still a float.
    assert type(resolve(DEFAULTS, {"VAD_THRESHOLD": "1"})["vad_threshold"]) is float


@pytest.mark.parametrize(
    ("key", "raw"), [("MAX_SESSIONS", "8.5"), ("MAX_SESSIONS", "many"), ("VAD_THRESHOLD", "half")]
)
def test_bad_numbers_raise(key: str, raw: str) -> None:
    with pytest.raises(ValueError):
        resolve(DEFAULTS, {key: raw})


def test_list_and_dict_from_json() -> None:
    out = resolve(DEFAULTS, {"LANGUAGES": '["fr"]', "LIMITS": '{"b": 2}'})
    assert out["languages"] == ["fr"] and out["limits"] == {"b": 2}
    with pytest.raises(ValueError):
        resolve(DEFAULTS, {"LANGUAGES": "fr,de"})


@pytest.mark.parametrize(
    ("key", "raw"),
    [("LANGUAGES", '"fr"'), ("LANGUAGES", '{"a": 1}'), ("LIMITS", "[1]"), ("LIMITS", "3")],
)
def test_json_of_the_wrong_type_raises(key: str, raw: str) -> None:
    with pytest.raises(ValueError, match=key):
        resolve(DEFAULTS, {key: raw})


def test_str_and_none_defaults_take_the_raw_string() -> None:
    out = resolve(DEFAULTS, {"WHISPER_MODEL": " small ", "NOTHING": "x"})
    assert out["whisper_model"] == " small "
    assert out["nothing"] == "x"
