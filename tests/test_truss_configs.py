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


# -- every third-party import of a truss is installed in its image ---------------------------------
_LOCAL_ROOTS = {"orpheus_tts": "orpheus_tts_truss/packages", "whisper_streaming":
                "whisper_streaming_truss/packages", "speech_common": "shared"}  # fmt: skip
_REPO = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    root = _LOCAL_ROOTS.get(name.split(".")[0])
    if root is None:
        return None
    base = _REPO / root / Path(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _third_party_imports(entry: Path) -> dict[str, str]:
    """Top-level third-party modules imported anywhere (lazily too) by ``entry`` and the local
    modules it reaches: module -> a file importing it."""
    import ast
    import sys

    seen: set[Path] = set()
    found: dict[str, str] = {}
    todo = [entry]
    while todo:
        path = todo.pop()
        if path in seen or not path.exists():
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                local = _module_file(name)
                if local is not None:
                    todo.append(local)
                elif name.split(".")[0] not in sys.stdlib_module_names | {"__future__"}:
                    found.setdefault(name.split(".")[0], str(path.relative_to(_REPO)))
    return found


def _with_dependencies(names: set[str]) -> set[str]:
    """The named distributions and what they require, as installed here (vLLM is not: its
    dependencies count only where the truss names them)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in out:
            continue
        out.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


@pytest.mark.parametrize("truss", ["orpheus_tts_truss", "whisper_streaming_truss"])
def test_every_import_is_in_the_image(truss: str) -> None:
    """A module the truss imports (its model.py and every local module reached from it) must
    come from a package its config.yaml names, or from one of their dependencies. (The Orpheus
    image lacked soxr and PyAV once: sessions with a response format would have died there.)"""
    import importlib.metadata as md

    cfg = TrussConfig.from_yaml(_REPO / truss / "config.yaml")
    named = {re.split(r"[=<>\[ ]", r)[0] for r in cfg.requirements}
    installed = _with_dependencies(named)
    distributions = md.packages_distributions()
    missing = {
        module: where
        for module, where in _third_party_imports(_REPO / truss / "model" / "model.py").items()
        if module != "vllm"  # named by the Orpheus truss, installable only on a GPU machine
        and not {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        & installed
    }
    assert not missing, f"{truss} imports packages its image does not install: {missing}"


@pytest.mark.parametrize(
    ("truss_dir", "model_class"),
    [("orpheus_tts_truss", "OrpheusSpeech"), ("whisper_streaming_truss", "WhisperTranscriptions")],
)
def test_http_flavour_config_is_the_websocket_one_but_for_its_transport(
    truss_dir: str, model_class: str
) -> None:
    """``truss push --config config_http.yaml``: passes Truss's push-time validation, and
    differs from config.yaml only in name, description, model class and transport, so the image
    check of config.yaml (same requirements, same weights) covers it."""
    import yaml
    from truss.base.truss_config import HTTPOptions

    truss = REPO_ROOT / truss_dir
    http = TrussConfig.from_yaml(truss / "config_http.yaml")
    http.validate_forbid_extra()
    assert isinstance(http.runtime.transport, HTTPOptions)
    assert http.model_class_name == model_class
    websocket = yaml.safe_load((truss / "config.yaml").read_text())
    other = yaml.safe_load((truss / "config_http.yaml").read_text())
    differs = {k for k in set(websocket) | set(other) if websocket.get(k) != other.get(k)}
    assert differs == {"model_name", "description", "model_class_name", "runtime"}
    websocket["runtime"].pop("transport")
    other["runtime"].pop("predict_concurrency")  # HTTP only: websocket sessions ignore it
    assert other["runtime"] == websocket["runtime"]


def _http_configs() -> list[Path]:
    return [
        path
        for truss in TRUSS_DIRS
        for path in sorted((REPO_ROOT / truss).glob("config*.yaml"))
        if not isinstance(TrussConfig.from_yaml(path).runtime.transport, WebsocketOptions)
    ]


def test_there_is_an_http_flavour() -> None:
    assert [p.relative_to(REPO_ROOT).as_posix() for p in _http_configs()] == [
        "whisper_streaming_truss/config_http.yaml",
        "orpheus_tts_truss/config_http.yaml",
    ]


@pytest.mark.parametrize("path", _http_configs(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_http_flavour_serves_as_many_requests_as_its_engine(path: Path) -> None:
    """The Truss server holds the predict_concurrency semaphore for a whole streaming response:
    truss's default 1 would serve one request per replica. It must be the engine's capacity."""
    config = TrussConfig.from_yaml(path)
    assert config.runtime.predict_concurrency == config.model_metadata["max_sessions"] > 1


# Baseten's startup probe: 1800 s by default, at most 3000 s (docs: development/model/health-checks).
BASETEN_MAX_STARTUP_S = 3000


@pytest.mark.parametrize(
    ("config_path", "at_least"),
    [
        # CTranslate2's first CUDA start on an H100 plus the weights: 900 s was below it.
        ("whisper_streaming_truss/config.yaml", 1800),
        ("whisper_streaming_truss/config_http.yaml", 1800),
        # vLLM's first start (torch.compile, CUDA graphs, FlashInfer JIT) plus 15 GB of weights.
        ("orpheus_tts_truss/config.yaml", 3000),
        ("orpheus_tts_truss/config_http.yaml", 3000),
    ],
)
def test_startup_threshold_covers_a_first_start(config_path: str, at_least: int) -> None:
    threshold = TrussConfig.from_yaml(REPO_ROOT / config_path).runtime.health_checks
    assert at_least <= threshold.startup_threshold_seconds <= BASETEN_MAX_STARTUP_S


def test_vllm_gives_up_before_the_startup_probe() -> None:
    """The engine's own start timeout logs its error before Baseten restarts the replica."""
    from orpheus_tts.vllm_engine import ENGINE_START_TIMEOUT_S

    config = TrussConfig.from_yaml(REPO_ROOT / "orpheus_tts_truss" / "config.yaml")
    assert ENGINE_START_TIMEOUT_S < config.runtime.health_checks.startup_threshold_seconds


# What production deploys differently from the settings' defaults: each on purpose (the
# settings' default serves the CPU stand-in or a deployment without the file).
PRODUCTION_ONLY = {
    "orpheus_tts_truss": {"snac_max_batch", "aligner_model"},  # H100 batch; mounted weights
    "whisper_streaming_truss": set(),
}


@pytest.mark.parametrize("truss", TRUSS_DIRS)
def test_config_metadata_restates_the_settings_defaults(truss: str) -> None:
    """Each default has one home, the truss's settings model; config.yaml's model_metadata
    lists them for whoever deploys it, and may differ only where PRODUCTION_ONLY says so."""
    import yaml

    from orpheus_tts.settings import OrpheusSettings
    from whisper_streaming.settings import WhisperSettings

    settings = {"whisper_streaming_truss": WhisperSettings, "orpheus_tts_truss": OrpheusSettings}
    defaults = settings[truss]()
    for config in sorted((REPO_ROOT / truss).glob("config*.yaml")):
        metadata = yaml.safe_load(config.read_text())["model_metadata"]
        differs = {
            key
            for key, value in metadata.items()
            if key in type(defaults).model_fields and value != getattr(defaults, key)
        }
        assert differs == PRODUCTION_ONLY[truss], config.name
