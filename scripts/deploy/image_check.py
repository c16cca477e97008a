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
from uv import find_uv_bin

from scripts import REPO_ROOT
from scripts.deploy.push import DEFAULT_CONFIG  # truss push without --config
from scripts.local.serve import build_context, with_config

TRUSS_DIRS = ("whisper_streaming_truss", "orpheus_tts_truss")
# Truss's GPU base image (baseten/truss-server-base, GPU flavour): CUDA 12.8 on Ubuntu 22.04,
# whose glibc 2.35 runs wheels tagged up to manylinux_2_35; x86-64 hosts.
BASE_IMAGE_CUDA = (12, 8)
PRODUCTION_PLATFORM = "x86_64-manylinux_2_35"
LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)")
# The CUDA runtime wheel (torch's CUDA) and NVIDIA's forward-compatibility apt package.
CUDA_RUNTIME_WHEELS = "nvidia-cuda-runtime*"  # plain, -cu12, -cu13
CUDA_COMPAT_PACKAGE = re.compile(r"\bcuda-compat-(\d+)-(\d+)\b")
# What each image must hold and must not hold: fnmatch patterns on normalised names.
IMAGE_RULES: dict[str, dict[str, tuple[str, ...]]] = {
    # CTranslate2 needs cuBLAS 12 only; torch (via silero-vad) brought ~20 CUDA-13 packages and a
    # second cuDNN that overwrote the first. PyAV decodes the HTTP flavour's uploads.
    "whisper_streaming_truss": {
        "required": ("faster-whisper", "ctranslate2", "onnxruntime", "nvidia-cublas-cu12", "av"),
        "forbidden": ("torch", "nvidia-cudnn*", "silero-vad"),
    },
    "orpheus_tts_truss": {"required": ("vllm", "torch", "snac")},
}


@dataclass
class Resolution:
    truss: str
    config: str
    python_version: str
    ok: bool  # it resolves
    packages: dict[str, str] = field(default_factory=dict)
    error: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.ok and not self.problems

    def summary(self) -> str:
        name = self.truss if self.config == DEFAULT_CONFIG else f"{self.truss} ({self.config})"
        if not self.ok:
            return (
                f"FAIL {name}: does not resolve (wheels only) for {PRODUCTION_PLATFORM} / "
                f"Python {self.python_version}:\n{self.error}"
            )
        if self.problems:
            return f"FAIL {name}: " + "; ".join(self.problems)
        shown = ("torch", "vllm", "fastapi", "starlette", "numpy")
        pins = ", ".join(f"{n}=={self.packages[n]}" for n in shown if n in self.packages)
        return f"ok   {name}: {len(self.packages)} packages ({pins})"


def truss_configs(truss_dir: Path) -> list[Path]:
    """The truss's deployable configs: config.yaml first, then each config_*.yaml flavour."""
    return [truss_dir / DEFAULT_CONFIG, *sorted(truss_dir.glob("config_*.yaml"))]


def parse_lock(text: str) -> dict[str, str]:
    matches = (LOCK_LINE.match(line.strip()) for line in text.splitlines())
    return {canonicalize_name(m["name"]): m["version"] for m in matches if m}


def resolve_context(context: Path, python: str) -> tuple[bool, str]:
    """Resolve the context's requirements + constraints as the Dockerfile would; (ok, output).
    ``unsafe-best-match`` is the Dockerfile's own index strategy (pip's "any index" behaviour);
    wheels only: the base image has no compiler to build a package without one."""
    requirements, constraints = context / "requirements.txt", context / "constraints.txt"
    cmd = [find_uv_bin(), "pip", "compile", str(requirements), "--constraint", str(constraints)]
    cmd += ["--index-strategy", "unsafe-best-match", "--only-binary", ":all:"]
    cmd += ["--python-platform", PRODUCTION_PLATFORM, "--python-version", python]
    cmd += ["--no-header", "--no-annotate", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return False, result.stderr.strip()
    return True, result.stdout


def check_rules(packages: dict[str, str], required=(), forbidden=()) -> list[str]:
    problems = [f"{p} is not in the image" for p in required if not fnmatch.filter(packages, p)]
    for pattern in forbidden:
        for name in sorted(fnmatch.filter(packages, pattern)):
            problems.append(f"{name}=={packages[name]} must not be in the image")
    return problems


def check_cuda_compat(packages: dict[str, str], build_commands: list[str]) -> list[str]:
    """A CUDA runtime newer than the base image's needs a driver that supports it: the image must
    install NVIDIA's cuda-compat-<major>-<minor> at least that new (build_commands)."""
    versions = [packages[n] + ".0" for n in fnmatch.filter(packages, CUDA_RUNTIME_WHEELS)]
    needed = max((tuple(map(int, v.split(".")[:2])) for v in versions), default=BASE_IMAGE_CUDA)
    installed = CUDA_COMPAT_PACKAGE.findall(" ".join(build_commands))
    if needed <= BASE_IMAGE_CUDA or any((int(a), int(b)) >= needed for a, b in installed):
        return []
    cuda, base = ("{}.{}".format(*version) for version in (needed, BASE_IMAGE_CUDA))
    return [
        f"CUDA {cuda} wheels on the CUDA {base} base image without cuda-compat-"
        f"{cuda.replace('.', '-')} (or newer) in build_commands: hosts with an older driver "
        "cannot start it"
    ]


def check_truss(truss_dir: Path, config: Path | None = None) -> Resolution:
    """Build the truss's context (for ``config``, default config.yaml, as ``truss push --config``
    does), resolve it and apply IMAGE_RULES (by folder name)."""
    truss_dir = truss_dir.resolve()
    config = (config or truss_dir / DEFAULT_CONFIG).resolve()
    with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
        source = truss_dir
        if config.name != DEFAULT_CONFIG:
            source = with_config(truss_dir, config, Path(tmp) / "truss")
        build_context(source, Path(tmp) / "context")
        normalised = yaml.safe_load((Path(tmp) / "context" / "config.yaml").read_text()) or {}
        digits = str(normalised.get("python_version", "py311")).removeprefix("py")
        python = f"{digits[0]}.{digits[1:]}"  # py311 -> 3.11
        ok, output = resolve_context(Path(tmp) / "context", python)
    if not ok:
        return Resolution(truss_dir.name, config.name, python, ok=False, error=output)
    packages = parse_lock(output)
    problems = check_rules(packages, **IMAGE_RULES.get(truss_dir.name, {}))
    problems += check_cuda_compat(packages, normalised.get("build_commands") or [])
    return Resolution(truss_dir.name, config.name, python, True, packages, problems=problems)


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
