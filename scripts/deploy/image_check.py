#!/usr/bin/env python
"""Check that each truss's production image resolves, without Docker and without installing.

Usage: ``python scripts/deploy/image_check.py [truss_dir ...]`` (default: both trusses).

For each truss and each of its configs (``config.yaml`` and every ``config_*.yaml`` flavour that
``truss push --config`` deploys): ``truss image build-context`` writes the image's
``requirements.txt`` (the truss's requirements plus the Truss server's own, unless the truss
names a package itself) and ``constraints.txt``; the Dockerfile installs that pair with uv. This
resolves the same pair with uv for the base image's platform (x86-64, Ubuntu 22.04's glibc 2.35:
manylinux_2_35; the config's Python), wheels only (the base image has no compilers), installing
nothing, then applies each truss's image rules (what must and must not be in the image) and
checks that a CUDA newer than the base image's comes with NVIDIA's forward-compatibility package.
Exit 1 if any fails; one line per truss and config on stdout.
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from packaging.utils import canonicalize_name
from truss.base.constants import CONFIG_FILE

from scripts import REPO_ROOT
from scripts.local.serve import build_context, with_config

TRUSS_DIRS = ("whisper_streaming_truss", "orpheus_tts_truss")
DEFAULT_CONFIG_NAME = CONFIG_FILE  # truss push without --config
# Truss's GPU base image (baseten/truss-server-base, GPU flavour): CUDA 12.8 on Ubuntu 22.04,
# whose glibc 2.35 runs wheels tagged up to manylinux_2_35; x86-64 hosts.
BASE_IMAGE_GLIBC = (2, 35)
BASE_IMAGE_CUDA = (12, 8)
PRODUCTION_PLATFORM = f"x86_64-manylinux_{BASE_IMAGE_GLIBC[0]}_{BASE_IMAGE_GLIBC[1]}"
# The base image has no compilers: a package without a wheel for the platform cannot install.
ONLY_BINARY = ":all:"
RESOLVE_TIMEOUT_S = 300
# The Dockerfile's own flag (truss templates): pip's "any index" behaviour across indexes.
INDEX_STRATEGY = "unsafe-best-match"
LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)")
# The CUDA runtime wheel (torch's CUDA) and NVIDIA's forward-compatibility apt package.
CUDA_RUNTIME_WHEELS = (
    "nvidia-cuda-runtime",
    "nvidia-cuda-runtime-cu12",
    "nvidia-cuda-runtime-cu13",
)
CUDA_COMPAT_PACKAGE = re.compile(r"\bcuda-compat-(?P<major>\d+)-(?P<minor>\d+)\b")


@dataclass(frozen=True)
class ImageRules:
    """What an image must hold and must not hold (fnmatch patterns on normalised names)."""

    required: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()


IMAGE_RULES: dict[str, ImageRules] = {
    # CTranslate2 needs cuBLAS 12 only; torch (via silero-vad) brought ~20 CUDA-13 packages and a
    # second cuDNN that overwrote the first.
    "whisper_streaming_truss": ImageRules(
        required=("faster-whisper", "ctranslate2", "onnxruntime", "nvidia-cublas-cu12"),
        forbidden=("torch", "nvidia-cudnn*", "silero-vad"),
    ),
    "orpheus_tts_truss": ImageRules(required=("vllm", "torch", "snac")),
}


@dataclass
class Resolution:
    truss: str
    python_version: str
    ok: bool
    packages: dict[str, str] = field(default_factory=dict)
    error: str = ""
    problems: list[str] = field(default_factory=list)
    config: str = DEFAULT_CONFIG_NAME

    @property
    def passed(self) -> bool:
        return self.ok and not self.problems

    @property
    def name(self) -> str:
        return self.truss if self.config == DEFAULT_CONFIG_NAME else f"{self.truss} ({self.config})"

    def summary(self) -> str:
        if not self.ok:
            return (
                f"FAIL {self.name}: does not resolve (wheels only) for {PRODUCTION_PLATFORM} / "
                f"Python {self.python_version}:\n{self.error}"
            )
        if self.problems:
            return f"FAIL {self.name}: " + "; ".join(self.problems)
        pins = ", ".join(
            f"{name}=={self.packages[name]}"
            for name in ("torch", "vllm", "fastapi", "starlette", "numpy")
            if name in self.packages
        )
        return f"ok   {self.name}: {len(self.packages)} packages ({pins})"


def truss_configs(truss_dir: Path) -> list[Path]:
    """The truss's deployable configs: config.yaml first, then each config_*.yaml flavour."""
    return [truss_dir / DEFAULT_CONFIG_NAME, *sorted(truss_dir.glob("config_*.yaml"))]


def python_version(config_path: Path) -> str:
    """``python_version: py311`` -> ``3.11``."""
    tag = str((yaml.safe_load(config_path.read_text()) or {}).get("python_version", "py311"))
    digits = tag.removeprefix("py")
    return f"{digits[0]}.{digits[1:]}"


def parse_lock(text: str) -> dict[str, str]:
    packages = {}
    for line in text.splitlines():
        match = LOCK_LINE.match(line.strip())
        if match:
            packages[canonicalize_name(match.group("name"))] = match.group("version")
    return packages


def uv_bin() -> str:
    from uv import find_uv_bin

    return find_uv_bin()


def resolve_context(context: Path, python: str) -> tuple[bool, str]:
    """Resolve the context's requirements + constraints as the Dockerfile would; (ok, output)."""
    cmd = [
        uv_bin(),
        "pip",
        "compile",
        str(context / "requirements.txt"),
        "--constraint",
        str(context / "constraints.txt"),
        "--index-strategy",
        INDEX_STRATEGY,
        "--python-platform",
        PRODUCTION_PLATFORM,
        "--python-version",
        python,
        "--only-binary",
        ONLY_BINARY,
        "--no-header",
        "--no-annotate",
        "--quiet",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
    if result.returncode != 0:
        return False, result.stderr.strip()
    return True, result.stdout


def check_rules(packages: dict[str, str], rules: ImageRules) -> list[str]:
    problems = []
    for pattern in rules.required:
        if not fnmatch.filter(packages, pattern):
            problems.append(f"{pattern} is not in the image")
    for pattern in rules.forbidden:
        for name in sorted(fnmatch.filter(packages, pattern)):
            problems.append(f"{name}=={packages[name]} must not be in the image")
    return problems


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = (version.split(".") + ["0"])[:2]
    return int(major), int(minor)


def check_cuda_compat(packages: dict[str, str], build_commands: list[str]) -> list[str]:
    """A CUDA runtime newer than the base image's needs a driver that supports it: the image must
    install NVIDIA's cuda-compat-<major>-<minor> at least that new (build_commands)."""
    runtimes = [_version_tuple(packages[n]) for n in CUDA_RUNTIME_WHEELS if n in packages]
    if not runtimes or max(runtimes) <= BASE_IMAGE_CUDA:
        return []
    needed = max(runtimes)
    installed = [
        (int(m.group("major")), int(m.group("minor")))
        for command in build_commands
        for m in CUDA_COMPAT_PACKAGE.finditer(command)
    ]
    if any(version >= needed for version in installed):
        return []
    return [
        f"CUDA {needed[0]}.{needed[1]} wheels on the CUDA {BASE_IMAGE_CUDA[0]}.{BASE_IMAGE_CUDA[1]} "
        f"base image without cuda-compat-{needed[0]}-{needed[1]} (or newer) in build_commands: "
        "hosts with an older driver cannot start it"
    ]


def check_truss(
    truss_dir: Path,
    rules: ImageRules | None = None,
    work: Path | None = None,
    config: Path | None = None,
) -> Resolution:
    """Build the truss's context (for ``config``, default config.yaml, as ``truss push --config``
    does) and resolve it; ``rules`` default to IMAGE_RULES by folder name."""
    truss_dir = truss_dir.resolve()
    config = (config or truss_dir / DEFAULT_CONFIG_NAME).resolve()
    rules = rules if rules is not None else IMAGE_RULES.get(truss_dir.name, ImageRules())
    with tempfile.TemporaryDirectory(prefix="image-check-", dir=work) as tmp:
        source = truss_dir
        if config.name != DEFAULT_CONFIG_NAME:
            source = with_config(truss_dir, config, Path(tmp) / "truss")
        context = Path(tmp) / "context"
        build_context(source, context)
        normalised = yaml.safe_load((context / "config.yaml").read_text()) or {}
        python = python_version(context / "config.yaml")
        ok, output = resolve_context(context, python)
    if not ok:
        return Resolution(truss_dir.name, python, False, error=output, config=config.name)
    packages = parse_lock(output)
    problems = check_rules(packages, rules)
    problems += check_cuda_compat(packages, list(normalised.get("build_commands") or []))
    return Resolution(truss_dir.name, python, True, packages, problems=problems, config=config.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truss_dirs", nargs="*", type=Path, help="default: both trusses")
    args = parser.parse_args(argv)
    dirs = args.truss_dirs or [REPO_ROOT / name for name in TRUSS_DIRS]
    results = [check_truss(d, config=c) for d in dirs for c in truss_configs(d)]
    for result in results:
        print(result.summary())
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
