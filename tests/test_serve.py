"""scripts/local/serve.py: env override table (unit) and the real Truss server over a real websocket (e2e)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from scripts.local import serve
from scripts.local.spawn import (
    REPO_ROOT,
    SERVE_SCRIPT,
    ServedTruss,
    ServeError,
    _python,
    serve_truss,
)
from tests.conftest import ECHO_TRUSS_DIR, FAILING_TRUSS_DIR

FAILURE_MESSAGE = "deliberate load failure from failing_truss"  # failing_truss/model/model.py
RECV_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 15.0
# uvicorn closes open websockets with 1012 (service restart) when it shuts down.
SERVICE_RESTART_CLOSE_CODE = 1012


async def _recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)


# --- env overrides (no server)


def test_cpu_defaults_without_gpu() -> None:
    overrides = serve.env_overrides(
        "whisper_streaming_truss", gpu=False, dummy_weights=False, environ={}
    )
    assert (
        overrides.items()
        >= {
            "WHISPER_MODEL": "embedded:tiny.en",
            "WHISPER_DEVICE": "cpu",
            "WHISPER_COMPUTE_TYPE": "int8",
        }.items()
    )


def test_no_cpu_defaults_with_gpu() -> None:
    assert serve.env_overrides("orpheus_tts_truss", gpu=True, dummy_weights=False, environ={}) == {}


def test_user_environment_wins() -> None:
    overrides = serve.env_overrides(
        "orpheus_tts_truss",
        gpu=False,
        dummy_weights=True,
        environ={"ORPHEUS_DEVICE": "cuda", "ORPHEUS_DUMMY_WEIGHTS": "0"},
    )
    assert "ORPHEUS_DEVICE" not in overrides
    assert "ORPHEUS_DUMMY_WEIGHTS" not in overrides
    assert overrides["ORPHEUS_ENGINE"] == "transformers"


def test_dummy_weights_also_on_gpu() -> None:
    overrides = serve.env_overrides("orpheus_tts_truss", gpu=True, dummy_weights=True, environ={})
    assert overrides == {"ORPHEUS_DUMMY_WEIGHTS": "1"}


def test_unknown_truss_gets_no_overrides() -> None:
    assert serve.env_overrides("echo_truss", gpu=False, dummy_weights=False, environ={}) == {}


def test_dummy_weights_rejected_for_truss_without_them() -> None:
    result = subprocess.run(
        [_python(), str(SERVE_SCRIPT), str(REPO_ROOT / ECHO_TRUSS_DIR), "--dummy-weights"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == serve.EXIT_USAGE
    assert result.stdout == b""
    assert b"--dummy-weights is not supported for echo_truss" in result.stderr


# --- the real Truss server


@pytest.mark.e2e
async def test_echoes_text_and_bytes(echo_server: ServedTruss) -> None:
    async with connect(echo_server.ws_url) as ws:
        await ws.send("hello ✓")
        assert await _recv(ws) == "hello ✓"
        payload = bytes(range(256)) * 64
        await ws.send(payload)
        assert await _recv(ws) == payload


@pytest.mark.e2e
async def test_model_runs_from_build_context(echo_server: ServedTruss) -> None:
    async with connect(echo_server.ws_url) as ws:
        await ws.send("__info__")
        info = json.loads(await _recv(ws))
    build_dir = REPO_ROOT / ".truss_build" / "echo_truss"
    # external_package_dirs: [../../../shared] bundled speech_common into the context's packages/.
    assert info["speech_common"].startswith(str(build_dir))
    assert info["speech_common"].endswith("/context/packages/speech_common")
    assert info["cwd"].startswith(str(build_dir))
    assert info["env"] == "set-by-config"  # config.yaml environment_variables
    assert info["settings"] == {"greeting": "hello", "load_delay_s": 0.0}  # model_metadata


@pytest.mark.e2e
async def test_model_close_code_passes_through(echo_server: ServedTruss) -> None:
    async with connect(echo_server.ws_url) as ws:
        await ws.send("__close__")
        with pytest.raises(ConnectionClosed):
            await _recv(ws)
    assert ws.close_code == 1000
    assert ws.close_reason == "bye"


@pytest.mark.e2e
async def test_metrics_include_model_counters(echo_server: ServedTruss) -> None:
    async with connect(echo_server.ws_url) as ws:
        await ws.send(b"\x00")
        await _recv(ws)
    text = echo_server.metrics_text()
    assert 'echo_frames_total{kind="bytes"}' in text


@pytest.mark.e2e
async def test_sigterm_shuts_down_cleanly() -> None:
    with serve_truss(ECHO_TRUSS_DIR) as served:
        run_dir = REPO_ROOT / ".truss_build" / "echo_truss" / str(served.process.pid)
        assert run_dir.is_dir()
        async with connect(served.ws_url) as ws:
            await ws.send("still here")
            assert await _recv(ws) == "still here"
            code = served.stop()
            with pytest.raises(ConnectionClosed):
                await _recv(ws)
        assert ws.close_code == SERVICE_RESTART_CLOSE_CODE
        assert code == 0, served.stderr_tail()
        assert served.process.stdout is not None
        assert served.process.stdout.read() == b""  # the URL line was the only stdout output
        assert not run_dir.exists()


@pytest.mark.e2e
def test_load_failure_exits_with_reason() -> None:
    with pytest.raises(ServeError) as excinfo, serve_truss(FAILING_TRUSS_DIR, start_timeout_s=60):
        pytest.fail("serve.py reported ready for a model whose load() raises")
    message = str(excinfo.value)
    assert f"exited with {serve.EXIT_LOAD_FAILED}" in message
    assert f"serve.py: model load failed: RuntimeError: {FAILURE_MESSAGE}" in message


@pytest.mark.e2e
def test_sigterm_during_load_exits_cleanly() -> None:
    # load() sleeps far longer than the test waits: serve.py must not wait for the load thread.
    env = {**os.environ, "LOAD_DELAY_S": "600"}
    process = subprocess.Popen(
        [_python(), str(SERVE_SCRIPT), str(REPO_ROOT / ECHO_TRUSS_DIR)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # the server logs this from its load thread
            if b"Executing model.load()" in line:
                break
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=SHUTDOWN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert stdout == b""


@pytest.mark.e2e
def test_busy_port_fails_fast(echo_server: ServedTruss) -> None:
    busy_port = echo_server.http_url.rsplit(":", 1)[1]
    result = subprocess.run(
        [_python(), str(SERVE_SCRIPT), str(REPO_ROOT / ECHO_TRUSS_DIR), "--port", busy_port],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == serve.EXIT_SERVER_FAILED
    assert result.stdout == b""
    assert f"cannot listen on 127.0.0.1:{busy_port}".encode() in result.stderr


def test_listening_socket_disables_nagle() -> None:
    """Accepted sockets inherit TCP_NODELAY: a close right after an error frame is not held back
    ~40 ms for the client's delayed ACK (measured 42 ms p50 before, 0.4 ms after)."""
    import socket

    sock = serve._bind(0)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; nobody may reap it in a container


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_a_server_does_not_outlive_the_process_that_started_it() -> None:
    """A test run killed hard (SIGKILL: no finally, no context exit) takes its server along."""
    code = (
        "import sys, time\n"
        "from scripts.local.spawn import serve_truss\n"
        f"with serve_truss({str(ECHO_TRUSS_DIR)!r}) as served:\n"
        "    print(served.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        server_pid = int(owner.stdout.readline())
        assert _alive(server_pid)
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 20
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server_pid)
    finally:
        owner.kill()
        owner.stdout.close()


def test_cpu_orpheus_aligns_words_with_the_embedded_whisper() -> None:
    """Word timestamps work on `make serve-orpheus` as on a deployment (issue 19)."""
    overrides = serve.env_overrides("orpheus_tts_truss", gpu=False, dummy_weights=True, environ={})
    assert overrides["ALIGNER_MODEL"] == "embedded:tiny.en"


def test_config_names_a_file_of_the_truss_from_the_repository_root(monkeypatch) -> None:
    """`serve.py orpheus_tts_truss --config config_http.yaml`, as docs/development.md writes it."""
    monkeypatch.chdir(serve.REPO_ROOT)
    args = serve._parse_args(["orpheus_tts_truss", "--config", "config_http.yaml"])
    assert args.config == serve.REPO_ROOT / "orpheus_tts_truss" / "config_http.yaml"
    with pytest.raises(SystemExit):
        serve._parse_args(["orpheus_tts_truss", "--config", "nothing.yaml"])
