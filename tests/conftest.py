"""Shared pytest fixtures: real Truss servers (scripts/local/serve.py), started once per session on demand.

Fixtures are lazy: a server starts only when a test that requests it runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from scripts.local.spawn import (
    ADMISSION_OFF,
    DEFAULT_START_TIMEOUT_S,
    TTS_ADMISSION_OFF,
    ServedTruss,
    serve_truss,
)

ECHO_TRUSS_DIR = "tests/fixtures/echo_truss"
FAILING_TRUSS_DIR = "tests/fixtures/failing_truss"
WHISPER_TRUSS_DIR = "whisper_streaming_truss"
ORPHEUS_TRUSS_DIR = "orpheus_tts_truss"
# A slow machine may need longer to load a model: SERVE_START_TIMEOUT_S overrides the default.
START_TIMEOUT_S = float(os.environ.get("SERVE_START_TIMEOUT_S", DEFAULT_START_TIMEOUT_S))


@pytest.fixture(scope="session")
def echo_server() -> Iterator[ServedTruss]:
    """The echo test truss on the real Truss server."""
    with serve_truss(ECHO_TRUSS_DIR, start_timeout_s=START_TIMEOUT_S) as served:
        yield served


@pytest.fixture(scope="session")
def whisper_server() -> Iterator[ServedTruss]:
    """whisper_streaming_truss on the real Truss server (CPU defaults without a GPU)."""
    with serve_truss(
        WHISPER_TRUSS_DIR, start_timeout_s=START_TIMEOUT_S, env=ADMISSION_OFF
    ) as served:
        yield served


@pytest.fixture(scope="session")
def orpheus_server() -> Iterator[ServedTruss]:
    """orpheus_tts_truss on the real Truss server with dummy (random) weights.

    The functional tests run up to 8 sessions at once on 2 cores, beyond the CPU stand-in's
    latency capacity (1-2 sessions): admission control is switched off here and measured on its
    own (scripts/bench/soak.py, tests/test_admission.py). Word timestamps use serve.py's
    default aligner (the embedded tiny.en), as `make serve-orpheus` does.
    """
    with serve_truss(
        ORPHEUS_TRUSS_DIR,
        dummy_weights=True,
        start_timeout_s=START_TIMEOUT_S,
        env=TTS_ADMISSION_OFF,
    ) as served:
        yield served


@pytest.fixture(scope="session")
def orpheus_http_server() -> Iterator[ServedTruss]:
    """orpheus_tts_truss's HTTP flavour (config_http.yaml), dummy weights."""
    with serve_truss(
        ORPHEUS_TRUSS_DIR,
        dummy_weights=True,
        start_timeout_s=START_TIMEOUT_S,
        env=TTS_ADMISSION_OFF,
        config="config_http.yaml",
    ) as served:
        yield served


@pytest.fixture(scope="session")
def whisper_http_server() -> Iterator[ServedTruss]:
    """whisper_streaming_truss's HTTP flavour (config_http.yaml): OpenAI's transcription
    request, tiny.en on CPU."""
    with serve_truss(
        WHISPER_TRUSS_DIR,
        start_timeout_s=START_TIMEOUT_S,
        env=ADMISSION_OFF,
        config="config_http.yaml",
    ) as served:
        yield served
