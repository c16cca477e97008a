"""speech_common.cuda_driver: the host's CUDA driver read before CUDA starts, forward
compatibility only where the host's is too old, and a message naming the fix otherwise.

No GPU here: fake ``libcuda.so.1`` libraries (compiled with the machine's C compiler, skipped
without one) answer ``cuDriverGetVersion`` and ``cuInit`` like a host driver and a compat one."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from speech_common import cuda_driver
from speech_common.cuda_driver import CudaDriverError, Probe, ensure_cuda_driver

FAKE_LIBCUDA = """
int cuDriverGetVersion(int *v) { *v = VERSION; return 0; }
int cuInit(unsigned int flags) { return INIT; }
"""


def build_fake_libcuda(folder: Path, version: int, init: int = 0) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for a fake libcuda")
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "fake_libcuda.c"
    source.write_text(FAKE_LIBCUDA)
    library = folder / "libcuda.so.1"
    subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            f"-DVERSION={version}",
            f"-DINIT={init}",
            "-Wl,-soname,libcuda.so.1",
        ]
        + ["-o", str(library), str(source)],
        check=True,
    )
    return library


@pytest.fixture
def host_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake host driver found as libcuda.so.1 through LD_LIBRARY_PATH; returns a builder."""

    def make(version: int) -> Path:
        library = build_fake_libcuda(tmp_path / "host", version)
        monkeypatch.setenv("LD_LIBRARY_PATH", str(library.parent))
        return library

    return make


def test_version_format() -> None:
    assert cuda_driver.format_version(12080) == "12.8"
    assert cuda_driver.format_version(13000) == "13.0"
    assert cuda_driver.format_version(12020) == "12.2"


def test_driver_version_in_process_with_a_fake_loader() -> None:
    class FakeLib:
        def cuDriverGetVersion(self, pointer) -> int:  # noqa: N802 (CUDA's name)
            pointer._obj.value = 12080
            return 0

    assert cuda_driver.driver_version(loader=lambda name: FakeLib()) == 12080

    def missing(name: str):
        raise OSError(f"{name}: cannot open shared object file")

    assert cuda_driver.driver_version(loader=missing) is None


def test_probe_reads_a_fake_host_driver_in_a_child_process(host_driver) -> None:
    host_driver(12080)
    assert cuda_driver.probe() == Probe(12080, None, "")
    assert cuda_driver.probe(init=True).init == 0


def test_probe_without_a_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    result = cuda_driver.probe(str(tmp_path / "libcuda.so.1"))
    assert result.version is None
    assert "cannot open" in result.error or "No such file" in result.error


def _ensure(compat_dirs=(), **kwargs):
    loaded: list[Path] = []
    check = ensure_cuda_driver(
        13000,
        "vLLM",
        compat_dirs=compat_dirs,
        fix="driver >= 580 or cuda-compat-13-0",
        load_fn=loaded.append,
        loaded_version=kwargs.pop("loaded_version", lambda: 13000),
        **kwargs,
    )
    return check, loaded


def test_new_enough_host_driver_uses_no_compat(host_driver, tmp_path: Path) -> None:
    host_driver(13020)
    compat = build_fake_libcuda(tmp_path / "compat", 13000).parent
    check, loaded = _ensure([compat])
    assert (check.host_version, check.compat_dir, check.version) == (13020, None, 13020)
    assert loaded == []  # an older compat driver over a newer host driver would fail (803)


def test_old_host_driver_loads_the_compat_driver(host_driver, tmp_path: Path) -> None:
    host_driver(12080)
    compat = build_fake_libcuda(tmp_path / "compat", 13000).parent
    check, loaded = _ensure([tmp_path / "absent", compat])
    assert loaded == [compat]
    assert (check.host_version, check.compat_dir, check.version) == (12080, str(compat), 13000)
    assert "forward compatibility" in check.describe()


def test_host_probe_does_not_see_the_compat_driver(host_driver, tmp_path, monkeypatch) -> None:
    """Were compat on LD_LIBRARY_PATH, the host probe would read it and skip the decision."""
    host = host_driver(12080)
    compat = build_fake_libcuda(tmp_path / "compat", 13000).parent
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{compat}:{host.parent}")
    _, loaded = _ensure([compat])
    assert loaded == [compat]


def test_old_host_driver_without_compat_names_the_fix(host_driver, tmp_path: Path) -> None:
    host_driver(12080)
    with pytest.raises(CudaDriverError) as error:
        _ensure([tmp_path / "cuda-13.0" / "compat"])
    message = str(error.value)
    assert "needs CUDA 13.0" in message and "supports CUDA 12.8" in message
    assert "driver >= 580 or cuda-compat-13-0" in message
    assert "install NVIDIA's cuda-compat-13-0" in message


@pytest.mark.parametrize(
    ("init", "reason"), [(804, "data-center GPU"), (803, "kernel driver branch")]
)
def test_compat_driver_that_cannot_start_names_why(host_driver, tmp_path, init, reason) -> None:
    host_driver(12020)
    compat = build_fake_libcuda(tmp_path / "compat", 13000, init=init).parent
    with pytest.raises(CudaDriverError) as error:
        _ensure([compat])
    assert reason in str(error.value)
    assert "driver >= 580" in str(error.value)


def test_no_driver_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    with pytest.raises(CudaDriverError, match="no driver"):
        _ensure(probe_fn=lambda *a, **k: Probe(None, None, "libcuda.so.1: not found"))


def test_host_libcuda_loaded_before_the_check_is_reported(host_driver, tmp_path) -> None:
    host_driver(12080)
    compat = build_fake_libcuda(tmp_path / "compat", 13000).parent
    with pytest.raises(CudaDriverError, match="already loaded the host's libcuda"):
        _ensure([compat], loaded_version=lambda: 12080)


def test_load_compat_loads_its_libraries_then_libcuda(tmp_path, monkeypatch) -> None:
    compat = tmp_path / "compat"
    compat.mkdir()
    for name in (
        "libcuda.so.1",
        "libcuda.so.580.65.06",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-nvvm.so.4",
        "libcudadebugger.so.1",
    ):
        (compat / name).write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/nvidia/lib64")
    monkeypatch.delenv("TRITON_LIBCUDA_PATH", raising=False)
    calls: list[tuple[str, int]] = []
    cuda_driver.load_compat(compat, loader=lambda path, mode: calls.append((Path(path).name, mode)))
    assert calls == [
        ("libnvidia-nvvm.so.4", ctypes.RTLD_GLOBAL),
        ("libnvidia-ptxjitcompiler.so.1", ctypes.RTLD_GLOBAL),
        ("libcuda.so.1", ctypes.RTLD_GLOBAL),
    ]
    assert os.environ["LD_LIBRARY_PATH"] == f"{compat}:/usr/local/nvidia/lib64"
    assert os.environ["TRITON_LIBCUDA_PATH"] == str(compat)
