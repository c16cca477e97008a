"""One settings layer for both trusses: a typed model per truss, filled from ``model_metadata``
and overridden per key by environment variables.

``config.yaml``'s ``model_metadata`` holds what a GPU deployment runs; a local CPU run
(``scripts/local/serve.py``) overrides keys with env vars named after the key in upper case
(``whisper_model`` → ``WHISPER_MODEL``). There is one coercion rule for both: pydantic's own
(lax) validation of the field's type, so ``"1"``/``"true"``/``"on"`` are booleans and ``"10"`` a
number, and a value that does not fit fails the load naming the key.

Naming scheme, the same in both trusses:
- the same idea has the same name (``max_sessions``, ``admission_*``, ``first_frame_timeout_s``);
- a model's own settings start with the model (``whisper_``, ``vad_``, ``turn_``, ``orpheus_``,
  ``snac_``, ``aligner_``); its batch size is ``<model>_max_batch``, its batch wait ``<model>_max_wait_ms``;
- engine arguments passed straight through keep the engine's name (vLLM's ``max_model_len``);
- units are suffixes (``_s``, ``_ms``, ``_chars``, ``_frames``).

No rename shims: nothing was deployed under an older name, so a key that is not a setting is
logged and ignored (a test holds every checked-in config to current names).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict

logger = logging.getLogger(__name__)

# model_metadata keys that Truss and people read, not the model.
TRUSS_KEYS = frozenset({"example_model_input"})


class Settings(BaseModel):
    """Base of each truss's settings: frozen, typed, one field per ``model_metadata`` key."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
    ) -> Self:
        """The defaults, then ``model_metadata``'s keys, then the environment's (``KEY``)."""
        environ = os.environ if environ is None else environ
        values = cls._from_mapping(metadata or {})
        values.update(cls._from_environment(environ))
        return cls.model_validate(values)

    @classmethod
    def _from_mapping(cls, metadata: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, value in metadata.items():
            if key in cls.model_fields:
                values[key] = value
            elif key not in TRUSS_KEYS:
                logger.warning("model_metadata key %r is not a setting; ignored", key)
        return values

    @classmethod
    def _from_environment(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            if name.upper() in environ:
                values[name] = environ[name.upper()]
                logger.info("setting %s overridden from the environment", name)
        return values


def model_dir(value: str, key: str) -> str:
    """The model directory a setting names (production mounts it with config.yaml's
    ``weights:``; a local run names a directory of its own: scripts/local/serve.py)."""
    if not os.path.isdir(value):
        raise RuntimeError(
            f"{key}: model directory {value!r} not found: in production the `weights:` section "
            f"of config.yaml mounts it; locally set {key.upper()} to a CTranslate2 Whisper "
            "directory (scripts/local/serve.py sets the embedded tiny.en without a GPU)."
        )
    return value
