"""Production defaults from ``model_metadata``, overridden per key by environment variables.

``config.yaml`` holds what a GPU deployment should run; a local CPU run (``scripts/serve.py``)
overrides individual keys with env vars named after the key in upper case
(``whisper_model`` → ``WHISPER_MODEL``). Values are coerced to the type of the default.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(raw: str, default: Any, key: str) -> Any:
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{key.upper()}={raw!r} is not a boolean")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, (list, dict)):
        value = json.loads(raw)
        if not isinstance(value, type(default)):  # '"fr"' for a list would iterate letters
            raise ValueError(f"{key.upper()}={raw!r} is not a JSON {type(default).__name__}")
        return value
    return raw


def resolve(
    model_metadata: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Merge ``model_metadata`` with env overrides (``KEY`` for each ``key``)."""
    environ = os.environ if environ is None else environ
    merged = dict(model_metadata or {})
    for key, default in list(merged.items()):
        raw = environ.get(key.upper())
        if raw is not None:
            merged[key] = _coerce(raw, default, key)
            logger.info("setting %s overridden from the environment", key)
    return merged
