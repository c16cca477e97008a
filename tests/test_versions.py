"""One source of versions: a package pinned by a truss and by requirements-dev.txt has one version,
unless the dev line says why not (with the word "production"), so the dev venv and the e2e tests
run what production runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[1]
TRUSS_DIRS = ("whisper_streaming_truss", "orpheus_tts_truss")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>[^\s;#]+)")
PRODUCTION_ONLY = re.compile(r"^#\s*production-only:\s*(?P<pin>\S+)")
# The Truss server's packages whose production version the e2e tests must run on.
SERVER_PACKAGES = ("fastapi", "starlette")


@dataclass(frozen=True)
class DevPin:
    version: str
    comment: str


def parse_pin(line: str) -> tuple[str, str] | None:
    match = PIN.match(line.strip())
    return (canonicalize_name(match.group("name")), match.group("version")) if match else None


def dev_pins(text: str) -> tuple[dict[str, DevPin], dict[str, str]]:
    """(pins with their trailing comment, production-only pins declared in comments)."""
    pins: dict[str, DevPin] = {}
    production_only: dict[str, str] = {}
    for line in text.splitlines():
        declared = PRODUCTION_ONLY.match(line.strip())
        if declared and (pin := parse_pin(declared.group("pin"))):
            production_only[pin[0]] = pin[1]
        elif pin := parse_pin(line):
            comment = line.split("#", 1)[1] if "#" in line else ""
            pins[pin[0]] = DevPin(pin[1], comment)
    return pins, production_only


def truss_pins(truss: str) -> dict[str, str]:
    config = yaml.safe_load((REPO_ROOT / truss / "config.yaml").read_text())
    return dict(p for r in config.get("requirements") or [] if (p := parse_pin(r)))


def version_problems(truss: dict[str, str], dev: dict[str, DevPin], only: dict[str, str]):
    problems = []
    for name, version in truss.items():
        if name in dev:
            pin = dev[name]
            if pin.version != version and "production" not in pin.comment:
                problems.append(f"{name}: truss {version}, dev {pin.version}, no reason given")
        elif name in only:
            if only[name] != version:
                problems.append(f"{name}: truss {version}, production-only line {only[name]}")
        else:
            problems.append(f"{name}=={version} is pinned by the truss, not in requirements-dev")
    return problems


@pytest.fixture(scope="module")
def dev() -> tuple[dict[str, DevPin], dict[str, str]]:
    return dev_pins((REPO_ROOT / "requirements-dev.txt").read_text())


@pytest.mark.parametrize("truss", TRUSS_DIRS)
def test_truss_pins_match_the_dev_venv(truss: str, dev) -> None:
    assert version_problems(truss_pins(truss), *dev) == []


@pytest.mark.parametrize("truss", TRUSS_DIRS)
def test_server_packages_pinned_as_in_production(truss: str, dev) -> None:
    # Named by the truss, these replace the Truss server's own bounds in the image; the dev venv
    # (and so every e2e test) runs exactly them.
    pins = truss_pins(truss)
    for name in SERVER_PACKAGES:
        assert pins[name] == dev[0][name].version


def test_installed_versions_are_the_pins(dev) -> None:
    from importlib.metadata import version

    for name in (*SERVER_PACKAGES, "numpy", "transformers", "pydantic"):
        assert version(name) == dev[0][name].version, name


def test_a_difference_without_a_reason_is_caught() -> None:
    pins, only = dev_pins(
        "numpy==2.4.6\n"
        "torch==2.13.0  # production 2.14.0: the local CPU wheel\n"
        "# production-only: vllm==0.33.0  (CUDA)\n"
    )
    assert version_problems({"torch": "2.14.0", "vllm": "0.33.0"}, pins, only) == []
    assert version_problems({"numpy": "2.3.5"}, pins, only) == [
        "numpy: truss 2.3.5, dev 2.4.6, no reason given"
    ]
    assert version_problems({"vllm": "0.34.0", "snac": "1.2.1"}, pins, only) == [
        "vllm: truss 0.34.0, production-only line 0.33.0",
        "snac==1.2.1 is pinned by the truss, not in requirements-dev",
    ]


def server_requirements() -> dict[str, str]:
    """The Truss server's own requirements (name -> specifier) of the installed truss, which
    build-context adds to each image unless the truss names the package itself."""
    from importlib.resources import files

    from packaging.requirements import Requirement

    text = (files("truss") / "templates" / "server" / "requirements.txt").read_text()
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = str(req.specifier)
    return out


@pytest.mark.parametrize("truss", TRUSS_DIRS)
def test_truss_server_dependencies_are_pinned(truss: str, dev) -> None:
    """A lower bound in the server's requirements (uvicorn>=0.24.0) resolves to whatever is
    newest at build time: each truss pins every such package, at the dev venv's version."""
    pins = truss_pins(truss)
    unpinned = []
    for name, spec in server_requirements().items():
        if spec.startswith("==") and "," not in spec:
            continue  # the server pins it exactly (cython, msgpack-numpy): it moves with truss
        if name not in pins:
            unpinned.append(f"{name}{spec}")
        else:
            assert pins[name] == dev[0][name].version, name
    assert unpinned == [], f"{truss} leaves the Truss server's versions to the resolver"


def test_server_requirements_parse() -> None:
    reqs = server_requirements()
    assert reqs["uvicorn"].startswith(">=")
    assert "fastapi" in reqs and "numpy" in reqs
