"""Start ``scripts/local/serve.py`` as a subprocess for end-to-end tests and stop it again.

``with serve_truss("whisper_streaming_truss") as served: ...`` waits for the URL line that
serve.py prints once the model is loaded, and sends SIGTERM on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from scripts import REPO_ROOT

logger = logging.getLogger(__name__)

SERVE_SCRIPT = REPO_ROOT / "scripts" / "local" / "serve.py"
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 10.0
STDERR_TAIL_CHARS = 4000
WS_URL_PREFIX = "ws://"
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies

# Admission control off (the same keys in both trusses): for functional e2e tests that load 2
# cores beyond their latency capacity, and for benchmarks that look for the knee themselves.
ADMISSION_OFF = {
    "ADMISSION_CAPACITY_SESSIONS": "64",
    "ADMISSION_MAX_QUEUE_WAIT_S": "1000",
}
# The TTS truss's pace signals (orpheus_tts.pace) off as well.
TTS_ADMISSION_OFF = {
    **ADMISSION_OFF,
    "ADMISSION_MAX_FIRST_AUDIO_S": "1000",
    "ADMISSION_MIN_SPEED_X": "0",
}


def _die_with_parent() -> None:
    """In the child, before exec: have Linux send it SIGTERM when the process that started it
    dies, so a test run or benchmark killed hard does not leave its server running (serve.py
    shuts down cleanly on SIGTERM; the flag survives its re-exec)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ServeError(RuntimeError):
    """serve.py exited or timed out before printing its URL."""


def _python() -> str:
    # The venv's python when it exists (CI, make), else whatever runs the tests.
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def _tail(log: IO[bytes]) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - STDERR_TAIL_CHARS))
    return log.read().decode(errors="replace")


@dataclass
class ServedTruss:
    """A running serve.py: its URLs, process and log."""

    ws_url: str
    http_url: str
    process: subprocess.Popen[bytes]
    stderr_log: IO[bytes]

    def metrics_text(self) -> str:
        """Body of ``GET /metrics`` (Prometheus text format; follows the redirect to /metrics/)."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=HTTP_TIMEOUT_S) as resp:
            return resp.read().decode()

    def stderr_tail(self) -> str:
        """The last few KB of the server's log (stderr)."""
        return _tail(self.stderr_log)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        return _stop(self.process, timeout_s)


def _stop(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning(
                "serve.py pid %s ignored SIGTERM for %.0f s; killing", process.pid, timeout_s
            )
            process.kill()
            process.wait()
    return process.returncode


def _read_url_line(process: subprocess.Popen[bytes], deadline: float, stderr_log: IO[bytes]) -> str:
    assert process.stdout is not None
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServeError(
                    f"serve.py printed no URL in time; stderr tail:\n{_tail(stderr_log)}"
                )
            if selector.select(timeout=min(remaining, 0.5)):
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:  # stdout closed: the process is exiting
                    code = process.wait()
                    raise ServeError(
                        f"serve.py exited with {code} before it was ready; stderr tail:\n"
                        f"{_tail(stderr_log)}"
                    )
                buffer += chunk
    line, rest = buffer.split(b"\n", 1)
    line = line.decode().strip()
    if rest or not line.startswith(WS_URL_PREFIX):
        raise ServeError(f"serve.py stdout is not one URL line: {buffer!r}")
    return line


@contextlib.contextmanager
def serve_truss(
    truss_dir: str | Path,
    *,
    dummy_weights: bool = False,
    env: Mapping[str, str] | None = None,
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
    config: str | Path | None = None,
) -> Iterator[ServedTruss]:
    """Run serve.py on a free port until the block ends; raises ServeError if it never gets ready."""
    truss_path = Path(truss_dir)
    if not truss_path.is_absolute():
        truss_path = REPO_ROOT / truss_path
    cmd = [_python(), str(SERVE_SCRIPT), str(truss_path), "--port", "0"]
    if dummy_weights:
        cmd.append("--dummy-weights")
    if config is not None:
        cmd += ["--config", str(truss_path / config)]
    child_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryFile(prefix="serve-stderr-") as stderr_log:
        process = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=stderr_log,
            env=child_env,
            cwd=REPO_ROOT,
            preexec_fn=_die_with_parent,
        )
        try:
            ws_url = _read_url_line(process, time.monotonic() + start_timeout_s, stderr_log)
            http_url = "http://" + ws_url.removeprefix(WS_URL_PREFIX).split("/", 1)[0]
            yield ServedTruss(ws_url, http_url, process, stderr_log)
        finally:
            code = _stop(process, stop_timeout_s)
            if process.stdout is not None:
                process.stdout.close()
        # Reached only when the block succeeded: a server that crashed or hung on shutdown
        # must not pass unnoticed.
        if code != 0:
            raise ServeError(f"serve.py exited with {code}; stderr tail:\n{_tail(stderr_log)}")
