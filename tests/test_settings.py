"""speech_common.settings.Settings: defaults, model_metadata, env overrides (one coercion rule)."""

from __future__ import annotations

import logging
from typing import Literal

import pytest
from pydantic import Field

from speech_common.settings import Settings


class Demo(Settings):
    model_name: str = "large-v3-turbo"
    flag: bool = True
    max_sessions: int = Field(20, ge=1)
    threshold: float = 0.5
    engine: Literal["a", "b"] = "a"


def test_defaults_without_metadata_or_env() -> None:
    assert Demo.from_metadata(None, {}) == Demo()


def test_metadata_then_env_which_is_the_upper_case_key() -> None:
    s = Demo.from_metadata(
        {"model_name": "base", "max_sessions": 3}, {"MODEL_NAME": "tiny", "model_name": "no"}
    )
    assert s.model_name == "tiny" and s.max_sessions == 3


def test_env_overrides_a_key_the_metadata_does_not_list() -> None:
    assert Demo.from_metadata({}, {"MAX_SESSIONS": "7"}).max_sessions == 7


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_SESSIONS", "3")
    assert Demo.from_metadata({}).max_sessions == 3


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("yes", True), ("on", True), ("0", False), ("false", False),
     ("no", False), ("off", False)],
)  # fmt: skip
def test_bool_coercion(raw: str, value: bool) -> None:
    assert Demo.from_metadata({}, {"FLAG": raw}).flag is value


@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "enabled"])
def test_bad_bool_raises_naming_the_setting(raw: str) -> None:
    with pytest.raises(ValueError, match="flag"):
        Demo.from_metadata({}, {"FLAG": raw})


def test_numbers_are_the_field_type() -> None:
    s = Demo.from_metadata({}, {"MAX_SESSIONS": "8", "THRESHOLD": "1"})
    assert s.max_sessions == 8 and type(s.max_sessions) is int
    assert s.threshold == 1.0 and type(s.threshold) is float


@pytest.mark.parametrize(
    ("key", "raw"),
    [("MAX_SESSIONS", "8.5"), ("MAX_SESSIONS", "many"), ("MAX_SESSIONS", "0"),
     ("THRESHOLD", "half"), ("ENGINE", "c")],
)  # fmt: skip
def test_bad_values_fail_the_load_naming_the_setting(key: str, raw: str) -> None:
    with pytest.raises(ValueError, match=key.lower()):
        Demo.from_metadata({}, {key: raw})


def test_str_fields_take_the_raw_string_and_numbers_from_yaml() -> None:
    assert Demo.from_metadata({}, {"MODEL_NAME": " small "}).model_name == " small "
    assert Demo.from_metadata({"model_name": 3}, {}).model_name == "3"


def test_unknown_metadata_keys_are_ignored_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        s = Demo.from_metadata({"typo_key": 1, "example_model_input": {}}, {})
    assert s == Demo()
    assert "typo_key" in caplog.text and "example_model_input" not in caplog.text


def test_no_rename_shims_an_old_name_is_just_unknown(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        assert Demo.from_metadata({"old_sessions": 5}, {"OLD_SESSIONS": "5"}) == Demo()
    assert "old_sessions" in caplog.text


def test_settings_are_frozen_and_closed() -> None:
    s = Demo()
    with pytest.raises(ValueError):
        s.max_sessions = 2  # type: ignore[misc]
    with pytest.raises(ValueError):
        Demo(nonsense=1)  # type: ignore[call-arg]


def test_model_dir_names_the_key_of_a_missing_directory(tmp_path) -> None:
    from speech_common.settings import model_dir

    assert model_dir(str(tmp_path), "aligner_model") == str(tmp_path)
    with pytest.raises(RuntimeError, match="ALIGNER_MODEL"):
        model_dir(str(tmp_path / "absent"), "aligner_model")
