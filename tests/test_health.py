"""Both models' is_healthy(): true while their engines and worker threads live, false once one
dies, so that Baseten restarts a replica that cannot serve (the readiness probe reads it)."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from speech_common.batching import WorkerStopped
from speech_common.vad import SileroVad
from tests.test_orpheus_runtime import fake_vllm  # noqa: F401 (fixture)
from tests.test_whisper_session import FakeEngine
from whisper_streaming.engine import DecodeOptions, JobKind, TranscribeJob
from whisper_streaming.scheduler import Scheduler

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 5.0


class Fatal(BaseException):
    """Escapes the worker's per-job error isolation: the thread dies, as on a fatal bug."""


def load_model_module(truss: str) -> ModuleType:
    path = REPO_ROOT / truss / "model" / "model.py"
    spec = importlib.util.spec_from_file_location(f"{truss}_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _wait_unhealthy(check: Any) -> None:
    for _ in range(int(WAIT_S / 0.01)):
        if not check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("still healthy")


# -- whisper ------------------------------------------------------------------------------------
class DyingEngine(FakeEngine):
    def run(self, jobs: list[TranscribeJob]) -> list[Any]:
        raise Fatal("CUDA error: an illegal memory access was encountered")


async def test_whisper_unhealthy_before_load_and_after_a_worker_dies() -> None:
    model = load_model_module("whisper_streaming_truss").Model(config={})
    assert model.is_healthy() is False  # nothing loaded
    scheduler = Scheduler(DyingEngine(), SileroVad(), max_batch=4, vad_max_batch=4).start()
    model._scheduler = scheduler  # noqa: SLF001 (what load() sets)
    try:
        assert model.is_healthy() is True
        job = TranscribeJob(
            JobKind.FINAL, np.zeros(16000, np.float32), DecodeOptions(language="en")
        )
        future = scheduler.whisper.submit(job, stream_id="s1")
        with pytest.raises(WorkerStopped):  # the session is told, it does not hang
            await asyncio.wait_for(future, WAIT_S)
        await _wait_unhealthy(model.is_healthy)
        assert scheduler.vad.healthy  # the other worker lives; the replica is still unhealthy
    finally:
        scheduler.stop()


# -- orpheus ------------------------------------------------------------------------------------
class LiveEngine:
    def __init__(self) -> None:
        self.alive = True

    def is_healthy(self) -> bool:
        return self.alive

    def shutdown(self) -> None:
        self.alive = False


def _dying_codec() -> Any:
    from orpheus_tts.snac_decoder import SnacCodec

    class DyingCodec(SnacCodec):
        def __init__(self) -> None:  # no model: it dies on its first window
            pass

        def decode_windows(self, windows: Any) -> Any:
            raise Fatal("CUDA error: device-side assert triggered")

    return DyingCodec()


def _orpheus_model(engine: Any) -> Any:
    from orpheus_tts.runtime import OrpheusRuntime
    from orpheus_tts.settings import OrpheusSettings
    from orpheus_tts.snac_decoder import SnacDecodeService

    decoder = SnacDecodeService(_dying_codec(), max_batch=1, max_wait_ms=0).start()
    model = load_model_module("orpheus_tts_truss").Model(config={})
    model._runtime = OrpheusRuntime(  # noqa: SLF001 (what load() sets)
        OrpheusSettings.from_metadata({}, environ={}), engine, None, decoder, None
    )
    return model, decoder


async def test_orpheus_unhealthy_when_the_snac_worker_dies() -> None:
    from orpheus_tts.snac_decoder import DecodeWindow

    assert load_model_module("orpheus_tts_truss").Model(config={}).is_healthy() is False
    model, decoder = _orpheus_model(LiveEngine())
    try:
        assert model.is_healthy() is True
        frames = np.zeros((4, 7), np.int64)
        with pytest.raises(WorkerStopped):
            await asyncio.wait_for(decoder.decode(DecodeWindow(frames, 0, 4, 0), "s1"), WAIT_S)
        await _wait_unhealthy(model.is_healthy)
    finally:
        decoder.stop()


async def test_orpheus_unhealthy_when_the_engine_dies() -> None:
    engine = LiveEngine()
    model, decoder = _orpheus_model(engine)
    try:
        assert model.is_healthy() is True
        engine.alive = False  # e.g. vLLM's engine-core process exited
        assert model.is_healthy() is False
    finally:
        decoder.stop()


def test_vllm_engine_health_follows_its_loop_thread_and_engine_core(fake_vllm) -> None:  # noqa: F811
    assert fake_vllm.is_healthy()
    fake_vllm._engine.errored = True  # noqa: SLF001 (vLLM: AsyncLLM.errored, engine core dead)
    assert not fake_vllm.is_healthy()
    fake_vllm._engine.errored = False  # noqa: SLF001
    fake_vllm.shutdown()  # the loop thread stops
    assert not fake_vllm.is_healthy()


def test_transformers_engine_health() -> None:
    from orpheus_tts.dummy import build_dummy_llama
    from orpheus_tts.transformers_engine import TransformersEngine

    engine = TransformersEngine(build_dummy_llama(64), max_model_len=64)
    assert engine.is_healthy()
    engine.shutdown()
    assert not engine.is_healthy()
