"""Every ``model_metadata`` key in a truss's config files is a setting the truss reads (a typo
would otherwise be ignored), every setting without a default is in them, and every override the
tooling sets (CPU stand-in, dummy weights, admission off) names a current setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic_core import PydanticUndefined

from orpheus_tts.settings import OrpheusSettings
from scripts.local.serve import CPU_DEFAULTS, DUMMY_WEIGHTS_OVERRIDES
from scripts.local.spawn import ADMISSION_OFF, TTS_ADMISSION_OFF
from speech_common.settings import TRUSS_KEYS
from whisper_streaming.settings import WhisperSettings

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "whisper_streaming_truss": WhisperSettings,
    "orpheus_tts_truss": OrpheusSettings,
}
CONFIGS = {
    "whisper_streaming_truss/config.yaml": WhisperSettings,
    "whisper_streaming_truss/config_http.yaml": WhisperSettings,
    "orpheus_tts_truss/config.yaml": OrpheusSettings,
    "orpheus_tts_truss/config_http.yaml": OrpheusSettings,
}


def _metadata(config: str) -> dict:
    return yaml.safe_load((REPO / config).read_text())["model_metadata"]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_metadata_key_is_a_setting_and_back(config: str) -> None:
    cls = CONFIGS[config]
    metadata = _metadata(config)
    unknown = set(metadata) - set(cls.model_fields) - TRUSS_KEYS
    assert not unknown, f"{config}: model_metadata keys no setting reads: {sorted(unknown)}"
    required = {n for n, f in cls.model_fields.items() if f.default is PydanticUndefined}
    assert required <= set(metadata)
    cls.from_metadata(metadata, environ={})  # valid as checked in


def test_both_trusses_name_the_same_idea_the_same() -> None:
    shared = {
        "max_sessions",
        "admission_capacity_sessions",
        "admission_max_queue_wait_s",
        "first_frame_timeout_s",
    }
    assert shared <= set(WhisperSettings.model_fields) & set(OrpheusSettings.model_fields)
    for cls in SETTINGS.values():
        batches = [n for n in cls.model_fields if n.endswith("max_batch")]
        assert batches and all(
            n.split("_")[0] in ("whisper", "vad", "turn", "snac") for n in batches
        )


@pytest.mark.parametrize(
    ("truss", "overrides"),
    [*((t, o) for t, o in CPU_DEFAULTS.items()),
     *((t, o) for t, o in DUMMY_WEIGHTS_OVERRIDES.items()),
     *((t, ADMISSION_OFF) for t in SETTINGS),
     ("orpheus_tts_truss", TTS_ADMISSION_OFF)],
)  # fmt: skip
def test_tooling_overrides_are_current_settings_with_valid_values(truss, overrides) -> None:
    cls = SETTINGS[truss]
    current = {name.upper() for name in cls.model_fields}
    assert set(overrides) <= current, set(overrides) - current
    cls.from_metadata({}, environ=overrides)  # each value parses as its setting's type


@pytest.mark.parametrize(
    ("cls", "page"), [(WhisperSettings, "docs/stt.md"), (OrpheusSettings, "docs/tts.md")]
)
def test_every_setting_is_documented_on_its_page(cls, page) -> None:
    text = (REPO / page).read_text()
    assert not [n for n in cls.model_fields if f"`{n}`" not in text]
