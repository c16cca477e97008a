"""The image check: each truss's production image, for every config, resolves (uv, wheels only,
the base image's platform: x86-64 manylinux_2_35, the config's Python) with what it must hold and
without what it must not; a conflicting pin, a package without a wheel, or CUDA wheels newer than
the base image without NVIDIA's compat package make it fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scripts.deploy import image_check

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


TARGETS = [
    (truss, config.name)
    for truss in image_check.TRUSS_DIRS
    for config in image_check.truss_configs(REPO_ROOT / truss)
]


@pytest.fixture(scope="module")
def all_resolutions() -> dict[tuple[str, str], image_check.Resolution]:
    return {
        (truss, config): image_check.check_truss(
            REPO_ROOT / truss, config=REPO_ROOT / truss / config
        )
        for truss, config in TARGETS
    }


@pytest.fixture(scope="module")
def resolutions(all_resolutions) -> dict[str, image_check.Resolution]:
    return {truss: all_resolutions[(truss, "config.yaml")] for truss in image_check.TRUSS_DIRS}


def test_every_config_is_checked() -> None:
    assert ("orpheus_tts_truss", "config_http.yaml") in TARGETS
    assert [c for t, c in TARGETS if t == "whisper_streaming_truss"] == [
        "config.yaml",
        "config_http.yaml",
    ]


@pytest.mark.parametrize(("truss", "config"), TARGETS)
def test_image_resolves_and_follows_its_rules(all_resolutions, truss: str, config: str) -> None:
    result = all_resolutions[(truss, config)]
    assert result.passed, result.summary()
    assert result.python_version == "3.11"
    assert result.config == config


@pytest.mark.parametrize("truss", image_check.TRUSS_DIRS)
def test_http_flavour_image_is_the_websocket_one(all_resolutions, truss: str) -> None:
    http = all_resolutions[(truss, "config_http.yaml")]
    assert http.packages == all_resolutions[(truss, "config.yaml")].packages


@pytest.mark.parametrize("truss", image_check.TRUSS_DIRS)
def test_truss_server_packages_are_the_pinned_ones(resolutions, truss: str) -> None:
    """The server's lower bounds no longer float: uvicorn is the commit's, not PyPI's newest."""
    packages = resolutions[truss].packages
    assert packages["uvicorn"] == "0.54.0"
    assert packages["websockets"] == "17.4"


def test_stt_image_has_no_torch_and_no_cudnn(resolutions: dict[str, image_check.Resolution]):
    packages = resolutions["whisper_streaming_truss"].packages
    assert "torch" not in packages
    assert not [name for name in packages if name.startswith("nvidia-cudnn")]
    assert not [name for name in packages if name.endswith("-cu13")]


def test_tts_image_gets_vllm_and_its_torch(resolutions: dict[str, image_check.Resolution]):
    packages = resolutions["orpheus_tts_truss"].packages
    assert packages["vllm"] == "0.33.0"
    assert packages["torch"] == "2.14.0"
    # The Truss server's own fastapi pin (<0.125) would make vLLM unresolvable.
    assert packages["fastapi"].startswith("0.136.")
    # torch 2.14's CUDA 13.0 on the CUDA 12.8 base image: the check demanded cuda-compat-13-0.
    assert packages["nvidia-cuda-runtime"].startswith("13.0.")


def _copy_truss_with(tmp_path: Path, truss: str, edit) -> Path:
    """A copy of the truss (with ../shared beside it) whose requirements ``edit`` rewrote."""
    target = tmp_path / truss
    shutil.copytree(REPO_ROOT / truss, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        REPO_ROOT / "shared", tmp_path / "shared", ignore=shutil.ignore_patterns("__pycache__")
    )
    config_path = target / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["requirements"] = edit(list(config["requirements"]))
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _replace(requirements: list[str], name: str, line: str | None) -> list[str]:
    out = [r for r in requirements if not r.startswith(f"{name}==")]
    return out + ([line] if line else [])


@pytest.mark.parametrize(
    ("name", "line", "conflict"),
    [
        # Today's main before the fix: the Truss server's fastapi pin comes back...
        ("fastapi", None, "fastapi"),
        # ...or numpy 2.4 against vLLM's mistral_common.
        ("numpy", "numpy==2.4.6", "numpy"),
    ],
)
def test_conflicting_pin_fails_the_check(tmp_path: Path, name: str, line: str | None, conflict):
    truss = _copy_truss_with(tmp_path, "orpheus_tts_truss", lambda reqs: _replace(reqs, name, line))
    result = image_check.check_truss(truss)
    assert not result.ok
    assert "No solution found" in result.error
    assert conflict in result.error


def test_forbidden_package_fails_the_check(tmp_path: Path) -> None:
    # silero-vad requires an unpinned torch: the STT image must refuse it.
    truss = _copy_truss_with(
        tmp_path, "whisper_streaming_truss", lambda reqs: reqs + ["silero-vad==6.2.3"]
    )
    result = image_check.check_truss(truss)
    assert result.ok
    assert not result.passed
    assert any(p.startswith("torch==") for p in result.problems), result.problems


def test_rules_and_lock_parsing() -> None:
    packages = image_check.parse_lock("Torch==2.14.0\nnvidia_cudnn_cu12==9.1\n# x\nfoo[bar]==1\n")
    assert packages == {"torch": "2.14.0", "nvidia-cudnn-cu12": "9.1", "foo": "1"}
    assert image_check.check_rules(packages, ("vllm",), ("nvidia-cudnn*",)) == [
        "vllm is not in the image",
        "nvidia-cudnn-cu12==9.1 must not be in the image",
    ]


def test_a_package_without_a_wheel_fails_the_check(tmp_path: Path) -> None:
    # docopt 0.6.2 is an sdist only: the base image has no compiler to build it.
    truss = _copy_truss_with(
        tmp_path, "whisper_streaming_truss", lambda reqs: reqs + ["docopt==0.6.2"]
    )
    result = image_check.check_truss(truss)
    assert not result.ok
    assert "docopt" in result.error


def test_resolves_for_the_base_images_platform_wheels_only(monkeypatch, tmp_path) -> None:
    seen = {}

    def run(cmd, **kwargs):
        seen["cmd"] = cmd
        return __import__("subprocess").CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(image_check.subprocess, "run", run)
    image_check.resolve_context(tmp_path, "3.11")
    cmd = seen["cmd"]
    assert cmd[cmd.index("--python-platform") + 1] == "x86_64-manylinux_2_35"  # glibc 2.35
    assert cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert cmd[cmd.index("--python-version") + 1] == "3.11"


def test_cuda_newer_than_the_base_image_needs_the_compat_package() -> None:
    cu13 = {"torch": "2.14.0", "nvidia-cuda-runtime": "13.0.96"}
    assert image_check.check_cuda_compat({"nvidia-cublas-cu12": "12.8.4.1"}, []) == []
    assert image_check.check_cuda_compat({"nvidia-cuda-runtime-cu12": "12.8.90"}, []) == []
    (problem,) = image_check.check_cuda_compat(cu13, ["apt-get install -y ffmpeg"])
    assert "cuda-compat-13-0" in problem
    assert image_check.check_cuda_compat(cu13, ["apt-get install -y cuda-compat-13-0"]) == []
    assert image_check.check_cuda_compat(cu13, ["apt-get install cuda-compat-13-2"]) == []
    assert image_check.check_cuda_compat(cu13, ["apt-get install cuda-compat-12-9"]) != []


def test_orpheus_without_the_compat_package_fails_the_check(tmp_path: Path) -> None:
    truss = _copy_truss_with(tmp_path, "orpheus_tts_truss", lambda reqs: reqs)
    config_path = truss / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config.pop("build_commands")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = image_check.check_truss(truss)
    assert result.ok and not result.passed
    assert any("cuda-compat-13-0" in p for p in result.problems), result.problems
