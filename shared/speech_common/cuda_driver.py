"""The host's CUDA driver, read before anything in this process initialises CUDA.

A CUDA library needs a driver that supports its CUDA version (``cuDriverGetVersion``: 12080 is
CUDA 12.8). vLLM 0.33's torch 2.14 wheels are CUDA 13.0 (host driver >= 580) on Truss's CUDA 12.8
base image, so an older host driver fails at the first CUDA call, deep inside vLLM. This module
turns that into a start-up decision with a message:

- host driver new enough: nothing to do;
- older, and the image carries NVIDIA's forward-compatibility driver (``cuda-compat-13-0`` in
  ``/usr/local/cuda-13.0/compat``, data-center GPUs only): prove in a child process that it
  initialises on this GPU (``cuInit``), then load it into this process before torch does
  (``libcuda.so.1`` is then found by its soname) and put its folder first on
  ``LD_LIBRARY_PATH`` for child processes (vLLM's spawned workers);
- otherwise: ``CudaDriverError`` naming the fix.

The host driver is probed in a child process: loading the host's ``libcuda.so.1`` here would make
every later ``dlopen("libcuda.so.1")`` return it, and the compat driver could no longer be used.
Nothing here calls ``cuInit`` in this process, so vLLM's fork of its engine core stays safe.
The compat driver is never put on the library path unconditionally: one older than the host's
kernel driver fails (CUDA error 803).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

LIBCUDA = "libcuda.so.1"
PROBE_TIMEOUT_S = 60
# cuInit's results that forward compatibility can return (NVIDIA's CUDA compatibility guide).
CUDA_ERRORS = {
    100: "CUDA_ERROR_NO_DEVICE",
    803: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH: the host's kernel driver branch does not support "
    "this forward-compatibility driver",
    804: "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE: forward compatibility needs a data-center GPU",
}
# The compat folder's libraries other than libcuda, loaded first so libcuda finds its own
# versions (PTX JIT, NVVM) rather than the host's; the debugger is never needed.
COMPAT_SKIP = ("libcudadebugger",)

# Runs in a child process: no import from this project (the image's sys.path may not be set
# there), no CUDA context. Prints {"version": int|null, "init": int|null, "error": str}.
PROBE_SOURCE = r"""
import ctypes, json, sys
library, init = sys.argv[1], sys.argv[2] == "1"
out = {"version": None, "init": None, "error": ""}
try:
    lib = ctypes.CDLL(library)
except OSError as exc:
    out["error"] = str(exc)
else:
    if init:
        out["init"] = lib.cuInit(0)
    version = ctypes.c_int(0)
    rc = lib.cuDriverGetVersion(ctypes.byref(version))
    if rc == 0:
        out["version"] = version.value
    else:
        out["error"] = "cuDriverGetVersion returned %d" % rc
print(json.dumps(out))
"""


class CudaDriverError(RuntimeError):
    """The host's driver cannot run this image's CUDA; the message names the fix."""


@dataclass(frozen=True)
class Probe:
    version: int | None  # cuDriverGetVersion, e.g. 12080; None: no driver could be loaded
    init: int | None = None  # cuInit(0)'s result when asked for
    error: str = ""


@dataclass(frozen=True)
class DriverCheck:
    host_version: int
    required: int
    compat_dir: str | None = None  # the forward-compatibility driver loaded, if any
    version: int = 0  # the CUDA version the process now runs with

    def describe(self) -> str:
        if self.compat_dir is None:
            return (
                f"host driver supports CUDA {format_version(self.host_version)} "
                f"(needed {format_version(self.required)})"
            )
        return (
            f"host driver supports CUDA {format_version(self.host_version)}; CUDA "
            f"{format_version(self.version)} through forward compatibility ({self.compat_dir})"
        )


def format_version(version: int) -> str:
    """cuDriverGetVersion's encoding: 12080 -> "12.8"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_version(library: str = LIBCUDA, loader: Callable[..., object] = ctypes.CDLL):
    """``cuDriverGetVersion`` of the libcuda ``library`` names, in this process (no cuInit);
    None where it cannot be loaded. Once loaded here, ``libcuda.so.1`` is the one every later
    user gets: use :func:`probe` for the host's driver before choosing."""
    try:
        lib = loader(library)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def _env_without(dirs: Sequence[str]) -> dict[str, str]:
    env = dict(os.environ)
    drop = {os.path.normpath(d) for d in dirs}
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
    kept = [p for p in parts if os.path.normpath(p) not in drop]
    if kept:
        env["LD_LIBRARY_PATH"] = ":".join(kept)
    else:
        env.pop("LD_LIBRARY_PATH", None)
    return env


def probe(
    library: str = LIBCUDA,
    *,
    init: bool = False,
    library_path: Sequence[str] = (),
    hide: Sequence[str] = (),
) -> Probe:
    """Load ``library`` in a child process (``library_path`` first on its LD_LIBRARY_PATH,
    ``hide`` removed from it) and read its driver version, after ``cuInit(0)`` if ``init``."""
    env = _env_without([*hide, *library_path])
    if library_path:
        env["LD_LIBRARY_PATH"] = ":".join([*library_path, env.get("LD_LIBRARY_PATH", "")]).rstrip(
            ":"
        )
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROBE_SOURCE, library, "1" if init else "0"],
            capture_output=True,
            text=True,
            env=env,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
        out = json.loads(result.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, IndexError, ValueError) as exc:
        return Probe(None, None, f"probe failed: {exc}")
    return Probe(out["version"], out["init"], out["error"])


def compat_libraries(compat_dir: Path) -> list[Path]:
    """What to load from a forward-compatibility folder, libcuda last."""
    others = sorted(
        p
        for p in compat_dir.glob("lib*.so.[0-9]")
        if not p.name.startswith((LIBCUDA.split(".")[0], *COMPAT_SKIP))
    )
    return [*others, compat_dir / LIBCUDA]


def load_compat(compat_dir: Path, loader: Callable[..., object] = ctypes.CDLL) -> None:
    """Make the compat driver this process's libcuda.so.1 and its children's."""
    for library in compat_libraries(compat_dir):
        loader(str(library), mode=ctypes.RTLD_GLOBAL)
    current = os.environ.get("LD_LIBRARY_PATH", "")
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in (str(compat_dir), current) if p)
    # Triton links its launchers against the libcuda it finds here first.
    os.environ.setdefault("TRITON_LIBCUDA_PATH", str(compat_dir))


def ensure_cuda_driver(
    required: int,
    what: str,
    *,
    compat_dirs: Sequence[str | Path] = (),
    fix: str = "",
    probe_fn: Callable[..., Probe] = probe,
    load_fn: Callable[[Path], None] = load_compat,
    loaded_version: Callable[[], int | None] = driver_version,
) -> DriverCheck:
    """Make sure this process can run CUDA ``required`` (e.g. 13000) before anything here loads
    libcuda; ``what`` names the software that needs it, ``fix`` how to get a driver for it."""
    compat_dirs = [str(d) for d in compat_dirs]
    need = format_version(required)
    host = probe_fn(LIBCUDA, hide=compat_dirs)
    if host.version is None:
        raise CudaDriverError(
            f"{what} needs an NVIDIA driver with CUDA {need}, and no driver ({LIBCUDA}) could be "
            f"loaded ({host.error or 'not found'}): deploy on a GPU (resources.accelerator)."
        )
    have = format_version(host.version)
    if host.version >= required:
        check = DriverCheck(host.version, required, None, host.version)
        logger.info("CUDA driver: %s", check.describe())
        return check
    usable = [Path(d) for d in compat_dirs if (Path(d) / LIBCUDA).is_file()]
    if not usable:
        raise CudaDriverError(
            f"{what} needs CUDA {need} and the host's NVIDIA driver supports CUDA {have}. "
            f"Fix: {fix or 'deploy on hosts with a newer driver'}"
            + (
                f"; no forward-compatibility driver at {', '.join(compat_dirs)} (install "
                f"NVIDIA's cuda-compat-{need.replace('.', '-')} package in the image)"
                if compat_dirs
                else ""
            )
            + "."
        )
    compat_dir = usable[0]
    trial = probe_fn(str(compat_dir / LIBCUDA), init=True, library_path=[str(compat_dir)])
    if trial.init != 0 or trial.version is None or trial.version < required:
        reason = (
            CUDA_ERRORS.get(trial.init, f"cuInit returned {trial.init}")
            if trial.init
            else trial.error or f"it reports CUDA {format_version(trial.version or 0)}"
        )
        raise CudaDriverError(
            f"{what} needs CUDA {need}; the host's NVIDIA driver supports CUDA {have} and the "
            f"forward-compatibility driver in {compat_dir} does not work here ({reason}). "
            f"Fix: {fix or 'deploy on hosts with a newer driver'}."
        )
    load_fn(compat_dir)
    now = loaded_version()
    if now is None or now < required:
        raise CudaDriverError(
            f"{what} needs CUDA {need}: the forward-compatibility driver in {compat_dir} works, "
            f"but this process had already loaded the host's libcuda (CUDA "
            f"{format_version(now or host.version)}) before the check; run the check before "
            "anything initialises CUDA."
        )
    check = DriverCheck(host.version, required, str(compat_dir), now)
    logger.warning("CUDA driver: %s", check.describe())
    return check
