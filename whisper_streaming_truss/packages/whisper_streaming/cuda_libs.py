"""Make pip's cuBLAS 12 loadable for CTranslate2 on GPU.

CTranslate2 4.8.5 dlopens ``libcublas.so.12`` by soname (its wheel is built without cuDNN: the
only CUDA library named in ``libctranslate2.so`` is libcublas.so.12). The pip wheel
``nvidia-cublas-cu12`` puts cuBLAS in site-packages where the loader does not look; loading
cuBLASLt and cuBLAS first with RTLD_GLOBAL satisfies that lookup. Nothing else in the wheel is
loaded: ``libnvblas`` would intercept the BLAS symbols of every later library (numpy's too).
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


def preload_cuda_libraries() -> list[str]:
    """Load pip's cuBLAS globally; returns the paths loaded."""
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
