"""Make pip's cuDNN 9 / cuBLAS 12 loadable for CTranslate2 on GPU.

CTranslate2 dlopens libcublas.so.12 and libcudnn*.so.9 by soname; the CUDA base image lacks
cuDNN, and the pip wheels (nvidia-cudnn-cu12, nvidia-cublas-cu12) put them in site-packages where
the loader does not look. Loading them first with RTLD_GLOBAL satisfies those lookups.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os

logger = logging.getLogger(__name__)

_PACKAGES = ("nvidia.cublas", "nvidia.cudnn")


def preload_cuda_libraries() -> list[str]:
    """Load the pip-installed CUDA libraries globally; returns the paths loaded."""
    loaded = []
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            logger.warning("%s is not installed; CTranslate2 may fail on GPU", package)
            continue
        lib_dir = os.path.join(list(spec.submodule_search_locations)[0], "lib")
        # cublasLt before cublas, and every cuDNN sub-library: order by name is enough.
        for path in sorted(
            glob.glob(os.path.join(lib_dir, "lib*.so*")), key=lambda p: ("Lt" not in p, p)
        ):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                loaded.append(path)
            except OSError as exc:
                logger.warning("could not load %s: %s", path, exc)
    return loaded
