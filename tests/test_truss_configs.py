"""Both trusses' config.yaml pass Truss's own push-time validation and meet our deployment contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from truss.base.truss_config import TrussConfig, WebsocketOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
TRUSS_DIRS = ["whisper_streaming_truss", "orpheus_tts_truss"]
SHARED_PACKAGE_DIR = "../shared"
# A revision that moves (a branch) is not pinned.
FLOATING_REVISIONS = {"main", "master", "head", "latest"}
HF_SOURCE = re.compile(r"^hf://(?P<repo>[^@]+?)(?:@(?P<rev>[^@]*))?$")


@pytest.fixture(params=TRUSS_DIRS)
def config(request: pytest.FixtureRequest) -> TrussConfig:
    # Fails (never skips) while a config.yaml is missing: both are part of the deliverable.
    parsed = TrussConfig.from_yaml(REPO_ROOT / request.param / "config.yaml")
    # What `truss push` runs: unknown keys are rejected there, not by a local parse.
    parsed.validate_forbid_extra()
    return parsed


def test_websocket_transport(config: TrussConfig) -> None:
    assert isinstance(config.runtime.transport, WebsocketOptions)


def test_requests_an_accelerator(config: TrussConfig) -> None:
    assert config.resources.accelerator.accelerator is not None
    assert config.resources.use_gpu


def test_bundles_shared_library(config: TrussConfig) -> None:
    assert SHARED_PACKAGE_DIR in config.external_package_dirs


def test_weights_have_pinned_revisions(config: TrussConfig) -> None:
    for weights in config.weights.root:
        match = HF_SOURCE.match(weights.source)
        assert match, f"not a Hugging Face source: {weights.source}"
        revision = match.group("rev")
        assert revision, f"{weights.source} has no @revision"
        assert revision.lower() not in FLOATING_REVISIONS, f"{weights.source} pins a branch"
        assert weights.mount_location.startswith("/"), weights.mount_location
    for entry in config.model_cache.models:
        assert entry.revision and entry.revision.lower() not in FLOATING_REVISIONS, entry.repo_id


def test_hf_source_pattern() -> None:
    assert HF_SOURCE.match("hf://owner/repo@0123abc").group("rev") == "0123abc"
    assert HF_SOURCE.match("hf://owner/repo").group("rev") is None
    assert HF_SOURCE.match("s3://bucket/path") is None


def test_whisper_weights_use_the_repositorys_current_name() -> None:
    # mobiuslabsgmbh/faster-whisper-large-v3-turbo was renamed; the same revision now lives here.
    config = TrussConfig.from_yaml(REPO_ROOT / "whisper_streaming_truss" / "config.yaml")
    (weights,) = config.weights.root
    assert (
        HF_SOURCE.match(weights.source).group("repo")
        == "dropbox-dash/faster-whisper-large-v3-turbo"
    )


@pytest.mark.parametrize("truss", TRUSS_DIRS)
def test_project_python_is_the_images(truss: str) -> None:
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    version = TrussConfig.from_yaml(REPO_ROOT / truss / "config.yaml").python_version
    assert project["requires-python"] == f">={version[2]}.{version[3:]}"
