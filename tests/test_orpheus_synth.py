"""Synthesizer: the dummy runtime end to end on CPU, and cancellation with a scripted engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
import torch

from orpheus_tts.engine import EngineError, SamplingParams
from orpheus_tts.runtime import OrpheusRuntime, load_runtime
from orpheus_tts.settings import OrpheusSettings
from orpheus_tts.synth import (
    MAX_TOKENS_PER_CHAR,
    MIN_MAX_TOKENS,
    GenerationStats,
    Synthesizer,
    max_tokens_for_text,
)
from orpheus_tts.tokens import BYTES_PER_FRAME, END_OF_SPEECH_TOKEN_ID, frame_token_ids

DUMMY_FRAMES = 6


@pytest.fixture(scope="module")
def runtime() -> OrpheusRuntime:
    torch.set_num_threads(2)
    settings = OrpheusSettings.from_metadata(
        {
            "orpheus_engine": "transformers",
            "orpheus_device": "cpu",
            "orpheus_dummy_weights": True,
            "max_model_len": 512,
            "snac_max_batch": 2,
            "orpheus_dummy_max_frames": DUMMY_FRAMES,
            "snac_noise": False,
        },
        environ={},
    )
    rt = load_runtime(settings)
    yield rt
    rt.shutdown()


async def test_dummy_runtime_streams_pcm_for_every_frame(runtime):
    stats = GenerationStats()
    chunks = [
        c
        async for c in runtime.synthesizer.stream(
            "Hello there.", "tara", SamplingParams(seed=1), "gen-1", stats
        )
    ]
    pcm = b"".join(chunks)
    assert stats.ended_by_stop_token
    assert stats.frames == DUMMY_FRAMES
    assert len(pcm) == stats.frames * BYTES_PER_FRAME  # frames x 2048 samples x 2 bytes
    assert len(chunks) == stats.windows
    assert np.abs(np.frombuffer(pcm, np.int16)).max() > 0


async def test_concurrent_generations_each_get_their_own_audio(runtime):
    async def run(i: int) -> tuple[int, int]:
        stats = GenerationStats()
        n = 0
        async for c in runtime.synthesizer.stream(
            f"Sentence {i}.", "leo", SamplingParams(seed=i), f"con-{i}", stats
        ):
            n += len(c)
        return n, stats.frames

    for n, frames in await asyncio.gather(*(run(i) for i in range(3))):
        assert n == frames * BYTES_PER_FRAME and frames > 0


async def test_unknown_voice_is_rejected_before_generation(runtime):
    with pytest.raises(ValueError, match="unknown voice"):
        runtime.synthesizer.stream("Hi", "nobody", SamplingParams(), "v")


# -- scripted engine: exact control over tokens, failures and cancellation ----------------------
class ScriptedEngine:
    def __init__(self, tokens: list[int], *, hang: bool = False, fail_after: int | None = None):
        self.tokens = tokens
        self.hang = hang
        self.fail_after = fail_after
        self.aborted: list[str] = []
        self.closed: list[str] = []

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[int]:
        try:
            for i, token in enumerate(self.tokens):
                if self.fail_after is not None and i == self.fail_after:
                    raise EngineError("boom")
                yield token
                await asyncio.sleep(0)
            if self.hang:
                await asyncio.Event().wait()
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def warmup(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def _frames(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    ids: list[int] = []
    for frame in rng.integers(0, 4096, size=(n, 7)):
        ids += frame_token_ids(frame)
    return ids


async def test_bad_tokens_cost_only_their_frames(runtime):
    good = _frames(5)
    # frame 2 broken by a wrong-slot token; a stray text token between frames 3 and 4
    tokens = good[:14] + good[15:16] + good[21:28] + [42] + good[28:35] + [END_OF_SPEECH_TOKEN_ID]
    synth = Synthesizer(ScriptedEngine(tokens), runtime.tokenizer, runtime.decoder)
    stats = GenerationStats()
    pcm = b"".join([c async for c in synth.stream("x", "tara", SamplingParams(), "bad", stats)])
    assert stats.frames == 4  # frames 0, 1, 3, 4
    assert len(pcm) == 4 * BYTES_PER_FRAME
    assert stats.dropped_tokens == 2


async def test_no_stop_token_still_flushes_the_tail(runtime):
    synth = Synthesizer(ScriptedEngine(_frames(3)), runtime.tokenizer, runtime.decoder)
    stats = GenerationStats()
    pcm = b"".join([c async for c in synth.stream("x", "tara", SamplingParams(), "tail", stats)])
    assert not stats.ended_by_stop_token
    assert len(pcm) == 3 * BYTES_PER_FRAME


async def test_engine_failure_propagates(runtime):
    engine = ScriptedEngine(_frames(4), fail_after=20)
    synth = Synthesizer(engine, runtime.tokenizer, runtime.decoder)
    with pytest.raises(EngineError):
        async for _ in synth.stream("x", "tara", SamplingParams(), "fail"):
            pass
    assert engine.closed == ["fail"]


async def test_closing_the_stream_aborts_engine_and_drops_queued_windows(runtime):
    engine = ScriptedEngine(_frames(12), hang=True)
    synth = Synthesizer(engine, runtime.tokenizer, runtime.decoder)
    stream = synth.stream("x", "tara", SamplingParams(), "cancel-me")
    first = await stream.__anext__()
    assert len(first) == BYTES_PER_FRAME
    await asyncio.sleep(0.05)  # the producer has queued more windows behind the first
    await stream.aclose()
    assert engine.aborted == ["cancel-me"]
    assert engine.closed == ["cancel-me"]
    assert runtime.decoder.cancel_stream("cancel-me") == 0  # nothing of it left queued


async def test_the_pace_tracks_each_generation_while_it_runs_and_forgets_it(runtime):
    engine = ScriptedEngine(_frames(12), hang=True)
    synth = Synthesizer(engine, runtime.tokenizer, runtime.decoder)
    stream = synth.stream("x", "tara", SamplingParams(), "paced")
    assert len(synth.pace) == 0  # nothing starts before the first read
    await stream.__anext__()
    assert len(synth.pace) == 1
    # First audio came: no generation waits for it any more.
    assert synth.pace.first_audio_wait_s(asyncio.get_running_loop().time() + 1e6) == 0.0
    await stream.aclose()
    assert len(synth.pace) == 0  # an aborted generation leaves no trace


async def test_cancelled_consumer_aborts_engine(runtime):
    engine = ScriptedEngine(_frames(3), hang=True)
    synth = Synthesizer(engine, runtime.tokenizer, runtime.decoder)

    async def consume() -> None:
        async for _ in synth.stream("x", "tara", SamplingParams(), "task"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.aborted == ["task"] and engine.closed == ["task"]


def test_max_tokens_for_text_is_bounded_by_text_and_client():
    assert max_tokens_for_text("Hi.", 2000) == MIN_MAX_TOKENS
    text = "x" * 100
    assert max_tokens_for_text(text, 2000) == 100 * MAX_TOKENS_PER_CHAR
    assert max_tokens_for_text("x" * 280, 2000) == 2000
    assert max_tokens_for_text(text, 50) == 50
    assert Synthesizer.max_tokens_for_text(text, 2000) == 1200
