"""Every ``model_metadata`` key in a truss's config files is a setting the truss reads (a typo
would otherwise be ignored silently), and every setting without a default is in them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from orpheus_tts.runtime import OrpheusSettings
from orpheus_tts.session import SessionLimits
from whisper_streaming.settings import WhisperSettings

REPO = Path(__file__).resolve().parents[1]
TRUSS_CONVENTIONS = {"example_model_input"}  # read by Truss and people, not by the model


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    if dataclasses.is_dataclass(cls):
        return {f.name: f for f in dataclasses.fields(cls)}
    return dict(cls.model_fields)  # pydantic


def _required(fields: dict) -> set[str]:
    missing = dataclasses.MISSING
    return {
        name for name, f in fields.items()
        if getattr(f, "default", missing) is missing
        and getattr(f, "default_factory", missing) is missing
    }  # fmt: skip


KNOWN = {
    "whisper_streaming_truss/config.yaml": {**_fields(WhisperSettings)},
    "orpheus_tts_truss/config.yaml": {
        **_fields(OrpheusSettings),
        **{f"tts_{k}": v for k, v in _fields(SessionLimits).items()},
    },
}
KNOWN["orpheus_tts_truss/config_http.yaml"] = KNOWN["orpheus_tts_truss/config.yaml"]


@pytest.mark.parametrize("config", sorted(KNOWN))
def test_every_metadata_key_is_a_setting_and_back(config: str) -> None:
    metadata = yaml.safe_load((REPO / config).read_text())["model_metadata"]
    known = KNOWN[config]
    unknown = set(metadata) - set(known) - TRUSS_CONVENTIONS
    assert not unknown, f"{config}: model_metadata keys no setting reads: {sorted(unknown)}"
    assert _required(known) <= set(metadata)
