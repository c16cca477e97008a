"""Sampling and the transformers token engine on a tiny random Llama (CPU)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import torch

from orpheus_tts.dummy import build_dummy_llama
from orpheus_tts.engine import EngineError, SamplingParams, TokenEngine
from orpheus_tts.tokens import (
    AUDIO_TOKEN_BASE,
    CODEBOOK_SIZE,
    END_OF_SPEECH_TOKEN_ID,
    VOCAB_SIZE,
    FrameParser,
)
from orpheus_tts.transformers_engine import AudioConstraint, TransformersEngine, sample_next

PROMPT = [128259, 128000, 116, 97, 114, 97, 58, 32, 72, 105, 128009, 128260, 128261, 128257]


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    torch.set_num_threads(2)
    return build_dummy_llama(max_model_len=512)


@pytest.fixture
def engine(llama) -> TransformersEngine:
    eng = TransformersEngine(llama, max_model_len=512, constraint=AudioConstraint(max_frames=4))
    yield eng
    eng.shutdown()


# -- sampling -----------------------------------------------------------------------------------
def _logits(seed: int = 0) -> torch.Tensor:
    return torch.randn(VOCAB_SIZE, generator=torch.Generator().manual_seed(seed))


def test_constraint_keeps_the_slot_range_and_stop_only_at_frame_boundaries():
    presence = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    logits = _logits()
    logits[END_OF_SPEECH_TOKEN_ID] = 100.0  # the model badly wants to stop
    c = AudioConstraint()
    gen = torch.Generator().manual_seed(0)
    mid = sample_next(logits, presence, SamplingParams(), gen, c.allowed(3, None))
    assert AUDIO_TOKEN_BASE + 3 * CODEBOOK_SIZE <= mid < AUDIO_TOKEN_BASE + 4 * CODEBOOK_SIZE
    assert sample_next(logits, presence, SamplingParams(), gen, c.allowed(7, None)) == (
        END_OF_SPEECH_TOKEN_ID
    )
    assert c.allowed(14, frames_cap=2) is None
    assert sample_next(logits, presence, SamplingParams(), gen, None) == END_OF_SPEECH_TOKEN_ID


def test_min_frames_forbids_the_stop_until_then():
    presence = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    logits = _logits()
    logits[END_OF_SPEECH_TOKEN_ID] = 100.0  # the model badly wants to stop
    c = AudioConstraint(min_frames=2)
    gen = torch.Generator().manual_seed(0)
    for generated in (0, 7):  # frame boundaries before the minimum: an audio token
        token = sample_next(
            logits, presence, SamplingParams(), gen, c.allowed(generated, None),
            c.may_stop(generated),
        )  # fmt: skip
        assert AUDIO_TOKEN_BASE <= token < AUDIO_TOKEN_BASE + CODEBOOK_SIZE
    assert (
        sample_next(logits, presence, SamplingParams(), gen, c.allowed(14, None), c.may_stop(14))
        == END_OF_SPEECH_TOKEN_ID
    )
    assert AudioConstraint(min_frames=9).allowed(14, frames_cap=2) is None  # the cap wins


def test_greedy_top_p_and_repetition_penalty():
    logits = torch.full((VOCAB_SIZE,), -10.0)
    logits[5], logits[6] = 4.0, 3.0
    presence = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0)
    assert sample_next(logits, presence, greedy) == 5
    presence[5] = True  # 4.0 / 2 < 3.0: the penalty flips the choice
    assert (
        sample_next(logits, presence, SamplingParams(temperature=0.0, repetition_penalty=2.0)) == 6
    )
    tiny_p = SamplingParams(top_p=0.01, repetition_penalty=1.0)
    presence[5] = False
    assert {
        sample_next(logits, presence, tiny_p, torch.Generator().manual_seed(s)) for s in range(20)
    } == {5}


def test_sampling_params_validation():
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=0)
    assert SamplingParams().stop_token_ids == (END_OF_SPEECH_TOKEN_ID,)


# -- engine -------------------------------------------------------------------------------------
async def test_constrained_dummy_generation_is_audio_then_stop(engine):
    assert isinstance(engine, TokenEngine)
    ids = [t async for t in engine.generate("r1", PROMPT, SamplingParams(seed=3))]
    assert ids[-1] == END_OF_SPEECH_TOKEN_ID
    parser = FrameParser()
    assert len(parser.feed_many(ids)) == 4
    assert parser.stats.dropped_tokens == 0 and parser.stats.non_audio_tokens == 0
    again = [t async for t in engine.generate("r2", PROMPT, SamplingParams(seed=3))]
    assert again == ids  # per-request seed
    assert list(engine.aborted) == []


async def test_max_tokens_bounds_the_generation(engine):
    ids = [t async for t in engine.generate("r", PROMPT, SamplingParams(max_tokens=16))]
    assert len(ids) <= 16
    assert ids[-1] == END_OF_SPEECH_TOKEN_ID  # the stop token fits inside max_tokens


async def test_unconstrained_engine_runs_to_max_tokens(llama):
    eng = TransformersEngine(llama, max_model_len=512)
    try:
        ids = [t async for t in eng.generate("r", PROMPT, SamplingParams(max_tokens=9, seed=0))]
        assert len(ids) == 9  # a random model does not stop on its own
    finally:
        eng.shutdown()


async def test_closing_the_stream_aborts_at_once(llama):
    eng = TransformersEngine(llama, max_model_len=512, constraint=AudioConstraint())
    try:
        stream = eng.generate("long", PROMPT, SamplingParams(max_tokens=400))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        assert len(got) == 3 and list(eng.aborted) == ["long"]
        # The worker saw the cancel: a new request runs at once on the freed thread.
        ids = [t async for t in eng.generate("next", PROMPT, SamplingParams(max_tokens=8))]
        assert len(ids) <= 8
    finally:
        eng.shutdown()


async def test_cancelled_consumer_aborts(llama):
    eng = TransformersEngine(llama, max_model_len=512, constraint=AudioConstraint())

    async def consume() -> None:
        # aclosing: an exception in an `async for` body does not close the generator by itself.
        async with contextlib.aclosing(
            eng.generate("c", PROMPT, SamplingParams(max_tokens=400))
        ) as s:
            async for _ in s:
                await asyncio.sleep(0)

    try:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert list(eng.aborted) == ["c"]
    finally:
        eng.shutdown()


async def test_prompt_longer_than_context_is_an_engine_error(llama):
    eng = TransformersEngine(llama, max_model_len=10)
    try:
        with pytest.raises(EngineError):
            async for _ in eng.generate("x", PROMPT, SamplingParams()):
                pass
    finally:
        eng.shutdown()


def test_aborted_ids_are_bounded():
    from orpheus_tts.transformers_engine import ABORTED_IDS_KEPT
    from orpheus_tts.vllm_engine import ABORTED_IDS_KEPT as VLLM_KEPT

    for kept in (ABORTED_IDS_KEPT, VLLM_KEPT):
        assert 0 < kept <= 10_000
    engine = TransformersEngine(build_dummy_llama(64), max_model_len=64)
    try:
        for i in range(ABORTED_IDS_KEPT + 10):
            engine.aborted.append(f"r{i}")
        assert (
            len(engine.aborted) == ABORTED_IDS_KEPT
            and engine.aborted[-1] == f"r{ABORTED_IDS_KEPT + 9}"
        )
    finally:
        engine.shutdown()


async def test_thread_bridge_hands_items_over_in_order_and_fails_on_an_exception():
    import threading

    from orpheus_tts.engine import DONE, EngineError, ThreadBridge

    bridge = ThreadBridge()
    thread = threading.Thread(target=lambda: [bridge.push(i) for i in (1, 2, 3, DONE)])
    thread.start()
    assert [item async for item in bridge.items("r")] == [1, 2, 3]
    thread.join()
    failing = ThreadBridge()
    failing.push(RuntimeError("boom"))
    with pytest.raises(EngineError, match="generation r failed: boom"):
        [item async for item in failing.items("r")]


def test_thread_bridge_reports_a_closed_loop():
    import asyncio

    from orpheus_tts.engine import ThreadBridge

    gone = []

    async def make() -> ThreadBridge:
        return ThreadBridge(on_gone=lambda: gone.append(True))

    loop = asyncio.new_event_loop()
    bridge = loop.run_until_complete(make())
    loop.close()
    bridge.push(1)
    assert gone == [True]
