"""Make pip's cuBLAS 12 loadable for CTranslate2 on GPU.

CTranslate2 4.8.5 dlopens ``libcublas.so.12`` by soname (its wheel is built without cuDNN: the
only CUDA library named in ``libctranslate2.so`` is libcublas.so.12). The pip wheel
``nvidia-cublas-cu12`` puts cuBLAS in site-packages where the loader does not look; loading
cuBLASLt and cuBLAS first with RTLD_GLOBAL satisfies that lookup. Nothing else in the wheel is
loaded: ``libnvblas`` would intercept the BLAS symbols of every later library (numpy's too).

cuBLAS 12.8 and CTranslate2's CUDA 12 kernels run on any CUDA 12 driver (minor version
compatibility: driver >= 525, which every H100 host has, H100 itself needing >= 525), so
Whisper needs no forward-compatibility package; ``check_cuda_driver`` still reads the host's
driver first and fails with the fix where it is older than CUDA 12.0.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os

logger = logging.getLogger(__name__)

CUBLAS_PACKAGE = "nvidia.cublas"
# cuBLAS needs cuBLASLt: load it first.
CUBLAS_LIBRARIES = ("libcublasLt.so.12", "libcublas.so.12")
# CUDA 12.0 (cuDriverGetVersion 12000): the oldest driver CUDA 12 libraries run on.
CUDA_DRIVER_VERSION = 12000


def check_cuda_driver() -> object:
    """The host's driver runs CUDA 12, or ``CudaDriverError`` naming the fix."""
    from speech_common.cuda_driver import ensure_cuda_driver

    return ensure_cuda_driver(
        CUDA_DRIVER_VERSION,
        "CTranslate2 4.8.5 (cuBLAS 12)",
        fix="deploy on hosts whose NVIDIA driver is >= 525 (CUDA 12.0)",
    )


def preload_cuda_libraries(check_driver: bool = True) -> list[str]:
    """Check the driver, then load pip's cuBLAS globally; returns the paths loaded."""
    if check_driver:
        check_cuda_driver()
    spec = importlib.util.find_spec(CUBLAS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        logger.warning("%s is not installed; CTranslate2 may fail on GPU", CUBLAS_PACKAGE)
        return []
    lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
    loaded = []
    for name in CUBLAS_LIBRARIES:
        path = os.path.join(lib_dir, name)
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            loaded.append(path)
        except OSError as exc:
            logger.warning("could not load %s: %s", path, exc)
    return loaded
