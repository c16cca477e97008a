"""Streaming SNAC windows and the batched decode service (random-weight SNAC, noise off)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from orpheus_tts.snac_decoder import (
    SNAC_24KHZ_CONFIG,
    SnacCodec,
    SnacDecodeService,
    build_snac,
    seam_error,
    stream_decode_sync,
)
from orpheus_tts.snac_stream import DecodeWindow, WindowPlanner, WindowPolicy, plan_all_windows
from orpheus_tts.tokens import SAMPLES_PER_FRAME

N_FRAMES = 8


@pytest.fixture(scope="module")
def codec() -> SnacCodec:
    torch.set_num_threads(2)
    return SnacCodec(build_snac(None, noise=False, seed=0))


@pytest.fixture(scope="module")
def small_codec() -> SnacCodec:
    """Same geometry as the 24 kHz SNAC (strides, kernels, receptive field), 1/16 the width:
    for tests of batching and ordering, where the decoder's size does not matter."""
    from snac import SNAC

    torch.manual_seed(0)
    model = SNAC(**{**SNAC_24KHZ_CONFIG, "decoder_dim": 64, "noise": False}).eval()
    return SnacCodec(model)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 4096, size=(N_FRAMES, 7))


@pytest.fixture(scope="module")
def errors(codec, frames) -> dict[WindowPolicy, dict[str, float]]:
    """Seam errors per window policy, decoded once for the module (SNAC on CPU is slow)."""
    offline = codec.decode_offline(frames)
    policies = [WindowPolicy(), WindowPolicy(3, 1, 3), WindowPolicy(1, 1, 2)]
    return {p: seam_error(codec, frames, p, offline) for p in policies}


# -- planner (no model) ------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [WindowPolicy(), WindowPolicy(1, 1, 1), WindowPolicy(2, 3, 1)])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 20])
def test_every_frame_is_emitted_once_in_order(policy, n):
    frames = np.arange(n * 7).reshape(n, 7) % 4096
    emitted = []
    for w in plan_all_windows(frames, policy):
        assert w.frames.tolist() == frames[w.first_frame : w.first_frame + w.n_frames].tolist()
        emitted.extend(range(w.first_frame + w.emit_start, w.first_frame + w.emit_end))
        assert w.n_frames <= policy.window_frames
    assert emitted == list(range(n))


def test_first_audio_after_hop_plus_right_frames():
    policy = WindowPolicy(left_context_frames=2, hop_frames=1, right_context_frames=2)
    planner = WindowPlanner(policy)
    assert planner.push((0,) * 7) == []
    assert planner.push((1,) * 7) == []
    (first,) = planner.push((2,) * 7)
    assert (first.first_frame, first.emit_start, first.emit_end, first.n_frames) == (0, 0, 1, 3)
    assert policy.tokens_before_first_audio == 21
    for i in range(3, 6):
        (w,) = planner.push((i,) * 7)
    # steady state: 2 left + 1 emitted + 2 right
    assert (w.first_frame, w.emit_start, w.emit_end, w.n_frames) == (1, 2, 3, 5)
    (tail,) = planner.finish()
    assert (tail.first_frame, tail.emit_start, tail.emit_end) == (2, 2, 4)
    assert planner.finish() == []
    with pytest.raises(RuntimeError):
        planner.push((0,) * 7)


def test_planner_keeps_only_needed_context():
    planner = WindowPlanner(WindowPolicy(2, 1, 2))
    for i in range(100):
        planner.push((i % 4096,) * 7)
    assert len(planner._frames) <= 5  # noqa: SLF001


# -- streamed vs offline decode ----------------------------------------------------------------
def test_streamed_equals_offline_within_bound(errors):
    # Default window: measured <= 9 LSB / 0.07 % of peak on random weights; assert 0.5 % of peak.
    err = errors[WindowPolicy()]
    assert err["streamed_samples"] == err["offline_samples"] == N_FRAMES * SAMPLES_PER_FRAME
    assert err["max_abs_rel_peak"] < 0.005
    assert err["rms_rel"] < 0.001


def test_full_receptive_field_is_sample_exact(errors):
    # 3 frames each side covers SNAC's receptive field: any dropped or repeated sample would show.
    err = errors[WindowPolicy(3, 1, 3)]
    assert err["streamed_samples"] == err["offline_samples"]
    assert err["max_abs"] <= 2  # int16 LSB: float rounding across batch shapes only


def test_one_frame_of_context_is_measurably_worse(errors):
    # The reference decoder's geometry (1 left, 2 right) leaves audible seams; ours must not.
    ref = errors[WindowPolicy(1, 1, 2)]
    ours = errors[WindowPolicy()]
    assert ref["max_abs"] > 10 * ours["max_abs"]


def test_shifted_stream_would_fail_the_bound(small_codec, frames):
    # Guard that the comparison can fail: a one-frame shift of the streamed audio is far off.
    offline = small_codec.decode_offline(frames).astype(np.float64)
    streamed = stream_decode_sync(small_codec, frames, WindowPolicy()).astype(np.float64)
    assert np.abs(streamed - offline).max() / np.abs(offline).max() < 0.005
    shifted = np.concatenate([streamed[SAMPLES_PER_FRAME:], streamed[:SAMPLES_PER_FRAME]])
    assert np.abs(shifted - offline).max() / np.abs(offline).max() > 0.05


# -- decode service (batching across streams) ---------------------------------------------------
async def test_service_batches_streams_and_keeps_order(small_codec, frames):
    codec = small_codec
    service = SnacDecodeService(codec, max_batch=8, max_wait_ms=20).start()
    try:
        policy = WindowPolicy()
        plans = {s: plan_all_windows(np.roll(frames, s, axis=0), policy) for s in range(2)}
        futures = {
            s: [service.submit(w, stream_id=s) for w in windows] for s, windows in plans.items()
        }
        for s, futs in futures.items():
            pcm = b"".join(await asyncio.gather(*futs))
            expected = stream_decode_sync(codec, np.roll(frames, s, axis=0), policy).tobytes()
            got = np.frombuffer(pcm, np.int16).astype(int)
            assert len(pcm) == len(expected)
            assert np.abs(got - np.frombuffer(expected, np.int16)).max() <= 2
        assert service.batches_run < service.jobs_run  # windows were decoded together
    finally:
        service.stop()


async def test_bad_window_fails_only_its_own_job(small_codec, frames):
    codec = small_codec
    service = SnacDecodeService(codec, max_batch=8, max_wait_ms=20).start()
    try:
        good = DecodeWindow(frames[:3], 0, 1, 0)
        bad_range = DecodeWindow(frames[:3], 2, 5, 0)  # emit range past the window
        with pytest.raises(ValueError):
            service.submit(DecodeWindow(frames[:3] + 5000, 0, 1, 0), stream_id="x")
        f1 = service.submit(good, stream_id="a")
        f2 = service.submit(bad_range, stream_id="b")
        f3 = service.submit(good, stream_id="c")
        assert len(await f1) == SAMPLES_PER_FRAME * 2
        with pytest.raises(ValueError):
            await f2
        assert await f3 == await f1
    finally:
        service.stop()


async def test_cancel_stream_drops_queued_windows(small_codec, frames):
    codec = small_codec
    service = SnacDecodeService(codec, max_batch=1, max_wait_ms=0).start()
    try:
        windows = plan_all_windows(frames, WindowPolicy())
        futs = [service.submit(w, stream_id="gone") for w in windows]
        dropped = service.cancel_stream("gone")
        assert dropped >= len(windows) - 2  # at most the running one escapes
        results = await asyncio.gather(*futs, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert cancelled == dropped
    finally:
        service.stop()
