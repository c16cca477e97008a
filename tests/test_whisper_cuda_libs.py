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
    paths = cuda_libs.preload_cuda_libraries()
    assert fake_cublas == ["libcublasLt.so.12", "libcublas.so.12"]
    assert [Path(p).name for p in paths] == fake_cublas


def test_missing_wheel_loads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_libs.importlib.util, "find_spec", lambda name: None)
    assert cuda_libs.preload_cuda_libraries() == []


def test_ctranslate2_needs_cublas_and_no_cudnn() -> None:
    """The premise, read off the installed CTranslate2 library itself."""
    import ctranslate2

    libs = Path(ctranslate2.__file__).resolve().parent.parent / "ctranslate2.libs"
    (library,) = libs.glob("libctranslate2-*.so*")
    data = library.read_bytes()
    assert b"libcublas.so.12" in data
    assert b"libcudnn" not in data
