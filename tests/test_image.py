"""The image check: each truss's production image resolves (uv, Linux x86-64, the config's
Python) with what it must hold and without what it must not; a conflicting pin makes it fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from scripts.deploy import image_check

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resolutions() -> dict[str, image_check.Resolution]:
    return {name: image_check.check_truss(REPO_ROOT / name) for name in image_check.TRUSS_DIRS}


@pytest.mark.parametrize("truss", image_check.TRUSS_DIRS)
def test_image_resolves_and_follows_its_rules(
    resolutions: dict[str, image_check.Resolution], truss: str
) -> None:
    result = resolutions[truss]
    assert result.passed, result.summary()
    assert result.python_version == "3.11"


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
    rules = image_check.ImageRules(required=("vllm",), forbidden=("nvidia-cudnn*",))
    assert image_check.check_rules(packages, rules) == [
        "vllm is not in the image",
        "nvidia-cudnn-cu12==9.1 must not be in the image",
    ]
