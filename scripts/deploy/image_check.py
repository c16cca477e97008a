#!/usr/bin/env python
"""Check that each truss's production image resolves, without Docker and without installing.

Usage: ``python scripts/deploy/image_check.py [truss_dir ...]`` (default: both trusses).

For each truss: ``truss image build-context`` writes the image's ``requirements.txt`` (the
truss's requirements plus the Truss server's own, unless the truss names a package itself) and
``constraints.txt``; the Dockerfile installs that pair with uv. This resolves the same pair with
uv for the production platform (Linux x86-64, the config's Python), installing nothing, then
applies each truss's image rules (what must and must not be in the image). Exit 1 if any truss
fails; one line per truss on stdout.
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

from scripts import REPO_ROOT
from scripts.local.serve import build_context

TRUSS_DIRS = ("whisper_streaming_truss", "orpheus_tts_truss")
# What the base images run on: the manylinux tag uv resolves wheels for.
PRODUCTION_PLATFORM = "x86_64-manylinux_2_28"
RESOLVE_TIMEOUT_S = 300
# The Dockerfile's own flag (truss templates): pip's "any index" behaviour across indexes.
INDEX_STRATEGY = "unsafe-best-match"
LOCK_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(?P<version>\S+)")


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

    @property
    def passed(self) -> bool:
        return self.ok and not self.problems

    def summary(self) -> str:
        if not self.ok:
            return f"FAIL {self.truss}: does not resolve for {PRODUCTION_PLATFORM} / Python {self.python_version}:\n{self.error}"
        if self.problems:
            return f"FAIL {self.truss}: " + "; ".join(self.problems)
        pins = ", ".join(
            f"{name}=={self.packages[name]}"
            for name in ("torch", "vllm", "fastapi", "starlette", "numpy")
            if name in self.packages
        )
        return f"ok   {self.truss}: {len(self.packages)} packages ({pins})"


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


def check_truss(
    truss_dir: Path, rules: ImageRules | None = None, work: Path | None = None
) -> Resolution:
    """Build the truss's context and resolve it; ``rules`` default to IMAGE_RULES by folder name."""
    truss_dir = truss_dir.resolve()
    rules = rules if rules is not None else IMAGE_RULES.get(truss_dir.name, ImageRules())
    with tempfile.TemporaryDirectory(prefix="image-check-", dir=work) as tmp:
        context = Path(tmp) / "context"
        build_context(truss_dir, context)
        python = python_version(context / "config.yaml")
        ok, output = resolve_context(context, python)
    if not ok:
        return Resolution(truss_dir.name, python, False, error=output)
    packages = parse_lock(output)
    return Resolution(truss_dir.name, python, True, packages, problems=check_rules(packages, rules))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truss_dirs", nargs="*", type=Path, help="default: both trusses")
    args = parser.parse_args(argv)
    dirs = args.truss_dirs or [REPO_ROOT / name for name in TRUSS_DIRS]
    results = [check_truss(d) for d in dirs]
    for result in results:
        print(result.summary())
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
