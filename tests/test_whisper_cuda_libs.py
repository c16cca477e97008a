"""cuda_libs: only cuBLASLt then cuBLAS from pip's wheel; never cuDNN or nvblas."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path

import pytest

from whisper_streaming import cuda_libs


@pytest.fixture
def fake_cublas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    lib = tmp_path / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    for name in ("libcublas.so.12", "libcublasLt.so.12", "libnvblas.so.12"):
        (lib / name).write_bytes(b"")
    spec = types.SimpleNamespace(submodule_search_locations=[str(lib.parent)])
    monkeypatch.setattr(
        cuda_libs.importlib.util,
        "find_spec",
        lambda name: spec if name == "nvidia.cublas" else None,
    )
    loaded: list[str] = []
    monkeypatch.setattr(ctypes, "CDLL", lambda path, mode=0: loaded.append(Path(path).name))
    return loaded


def test_loads_cublaslt_then_cublas_only(fake_cublas: list[str]) -> None:
    paths = cuda_libs.preload_cuda_libraries(check_driver=False)
    assert fake_cublas == ["libcublasLt.so.12", "libcublas.so.12"]
    assert [Path(p).name for p in paths] == fake_cublas


def test_missing_wheel_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_libs.importlib.util, "find_spec", lambda name: None)
    assert cuda_libs.preload_cuda_libraries(check_driver=False) == []


def test_ctranslate2_needs_cublas_and_no_cudnn() -> None:
    """The premise, read off the installed CTranslate2 library itself."""
    import ctranslate2

    libs = Path(ctranslate2.__file__).resolve().parent.parent / "ctranslate2.libs"
    (library,) = libs.glob("libctranslate2-*.so*")
    data = library.read_bytes()
    assert b"libcublas.so.12" in data
    assert b"libcudnn" not in data


def test_driver_checked_before_cublas(monkeypatch: pytest.MonkeyPatch, fake_cublas) -> None:
    from speech_common.cuda_driver import CudaDriverError

    def too_old() -> None:
        raise CudaDriverError("host driver supports CUDA 11.8")

    monkeypatch.setattr(cuda_libs, "check_cuda_driver", too_old)
    with pytest.raises(CudaDriverError):
        cuda_libs.preload_cuda_libraries()
    assert fake_cublas == []  # nothing loaded before the check


def test_driver_check_asks_for_cuda_12(monkeypatch: pytest.MonkeyPatch) -> None:
    from speech_common import cuda_driver

    seen = {}

    def ensure(required, what, **kwargs):
        seen.update(required=required, what=what, **kwargs)

    monkeypatch.setattr(cuda_driver, "ensure_cuda_driver", ensure)
    cuda_libs.check_cuda_driver()
    assert seen["required"] == 12000
    assert "525" in seen["fix"]
    assert "compat_dirs" not in seen  # CUDA 12 libraries on a CUDA 12 base image
