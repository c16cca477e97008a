"""speech_common.audio: decoding split frames, G.711 mu-law, clipping, streaming resampling, buffers."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

from speech_common.audio import (
    BYTES_PER_SAMPLE,
    AudioInput,
    Encoding,
    PcmDecoder,
    SampleBuffer,
    StreamingResampler,
    float_to_s16le,
    int16_to_float,
    mulaw_decode,
    mulaw_encode,
)

RNG_SEED = 1234


def _g711_decode_reference(byte: int) -> int:
    """G.711 mu-law expansion written from the standard's formula, independent of the module."""
    u = ~byte & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return (0x84 - t) if u & 0x80 else (t - 0x84)


def _random_s16(n: int) -> np.ndarray:
    return np.random.default_rng(RNG_SEED).integers(-32768, 32768, n, dtype=np.int16)


def _sine(rate: int, seconds: float, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


# -- PcmDecoder -------------------------------------------------------------------------------
def _decode_in_frames(decoder: PcmDecoder, data: bytes, cuts: list[int]) -> np.ndarray:
    pieces = []
    prev = 0
    for cut in [*cuts, len(data)]:
        pieces.append(decoder.decode(data[prev:cut]))
        prev = cut
    return np.concatenate(pieces)


def test_s16le_split_at_every_odd_boundary_matches_one_shot() -> None:
    samples = _random_s16(400)
    data = samples.astype("<i2").tobytes()
    expected = PcmDecoder(Encoding.PCM_S16LE).decode(data)
    np.testing.assert_array_equal(expected, int16_to_float(samples))
    # A frame boundary inside every sample: each frame is 1 byte, then 3, 3, ... (always odd cuts).
    cuts = list(range(1, len(data), 2))
    decoder = PcmDecoder(Encoding.PCM_S16LE)
    got = _decode_in_frames(decoder, data, cuts)
    np.testing.assert_array_equal(got, expected)
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("seed", range(5))
def test_s16le_random_frame_sizes_match_one_shot(seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = _random_s16(3000)
    data = samples.astype("<i2").tobytes()
    cuts = sorted(set(rng.integers(0, len(data), 200).tolist()))
    decoder = PcmDecoder(Encoding.PCM_S16LE)
    got = _decode_in_frames(decoder, data, cuts)
    np.testing.assert_array_equal(got, int16_to_float(samples))
    assert got.dtype == np.float32


def test_s16le_odd_tail_is_held_back() -> None:
    decoder = PcmDecoder(Encoding.PCM_S16LE)
    out = decoder.decode(b"\x01\x00\x02")
    np.testing.assert_array_equal(out, np.array([1 / 32768], np.float32))
    assert decoder.pending_bytes == 1
    out = decoder.decode(b"\x00")
    np.testing.assert_array_equal(out, np.array([2 / 32768], np.float32))
    assert decoder.pending_bytes == 0
    assert len(decoder.decode(b"")) == 0


def test_s16le_extremes() -> None:
    data = np.array([-32768, 32767, 0], "<i2").tobytes()
    out = PcmDecoder(Encoding.PCM_S16LE).decode(data)
    np.testing.assert_array_equal(out, np.array([-1.0, 32767 / 32768, 0.0], np.float32))


def test_mulaw_decoder_any_frame_size() -> None:
    data = bytes(range(256)) * 3
    decoder = PcmDecoder(Encoding.PCM_MULAW)
    got = _decode_in_frames(decoder, data, [1, 2, 5, 100, 101, 700])
    np.testing.assert_array_equal(got, int16_to_float(mulaw_decode(data)))
    assert decoder.pending_bytes == 0


def test_unknown_encoding_rejected() -> None:
    with pytest.raises(ValueError):
        PcmDecoder("opus")  # type: ignore[arg-type]


def test_every_encoding_has_a_sample_size() -> None:
    assert set(BYTES_PER_SAMPLE) == set(Encoding)


# -- pcm_f32le (Web Audio's Float32Array, WhisperLive's clients) ------------------------------
def _random_f32(n: int) -> np.ndarray:
    return np.random.default_rng(RNG_SEED).uniform(-1.0, 1.0, n).astype(np.float32)


def test_f32le_in_range_is_exact_at_any_frame_boundary() -> None:
    samples = _random_f32(300)
    samples[:4] = [-1.0, 1.0, 0.0, -0.0]
    data = samples.astype("<f4").tobytes()
    np.testing.assert_array_equal(PcmDecoder(Encoding.PCM_F32LE).decode(data), samples)
    for cuts in ([1, 2, 3, 5, 9, 10, 11], list(range(3, len(data), 7))):
        decoder = PcmDecoder(Encoding.PCM_F32LE)
        got = _decode_in_frames(decoder, data, cuts)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, samples)
        assert decoder.pending_bytes == 0


def test_f32le_split_sample_is_held_back() -> None:
    decoder = PcmDecoder(Encoding.PCM_F32LE)
    data = np.array([0.25, -0.5], "<f4").tobytes()
    assert len(decoder.decode(data[:3])) == 0 and decoder.pending_bytes == 3
    np.testing.assert_array_equal(decoder.decode(data[3:6]), [0.25])
    assert decoder.pending_bytes == 2
    np.testing.assert_array_equal(decoder.decode(data[6:]), [-0.5])


def test_f32le_is_little_endian() -> None:
    data = np.array([0.5], ">f4").tobytes()  # big-endian 0.5 read as little-endian: ~9e-44
    assert abs(PcmDecoder(Encoding.PCM_F32LE).decode(data)[0]) < 1e-30


def test_f32le_clips_out_of_range_and_neutralises_nan_and_inf() -> None:
    values = [1.5, -2.0, 1e30, -1e30, np.inf, -np.inf, np.nan, -np.nan, 0.75, 1.0000001]
    data = np.array(values, "<f4").tobytes()
    got = PcmDecoder(Encoding.PCM_F32LE).decode(data)
    np.testing.assert_array_equal(got, [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.75, 1.0])


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256), cuts=st.lists(st.integers(0, 256), max_size=8))
def test_f32le_any_bytes_decode_to_bounded_finite_samples(data: bytes, cuts: list[int]) -> None:
    """Whatever a client sends (NaN payloads, denormals, garbage), cut anywhere: no exception,
    one sample per 4 bytes, every sample finite and within [-1, 1]."""
    decoder = PcmDecoder(Encoding.PCM_F32LE)
    got = _decode_in_frames(decoder, data, sorted(c for c in cuts if c <= len(data)))
    assert len(got) == len(data) // 4 and decoder.pending_bytes == len(data) % 4
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got)) and np.all(np.abs(got) <= 1.0)


# -- G.711 mu-law -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("byte", "value"),
    [
        (0xFF, 0),
        (0x7F, 0),
        (0x80, 32124),
        (0x00, -32124),
        (0xFE, 8),
        (0x7E, -8),
        (0xEF, 132),
        (0xF0, 120),
        (0x8F, 16764),
    ],
)
def test_mulaw_decode_known_values(byte: int, value: int) -> None:
    assert _g711_decode_reference(byte) == value  # the reference formula itself
    assert int(mulaw_decode(bytes([byte]))[0]) == value


def test_mulaw_decode_table_matches_reference_formula() -> None:
    table = mulaw_decode(bytes(range(256)))
    assert table.dtype == np.int16
    assert table.tolist() == [_g711_decode_reference(b) for b in range(256)]


def test_mulaw_encode_decode_round_trip_error_bounded_per_segment() -> None:
    x = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    back = mulaw_decode(mulaw_encode(x)).astype(np.int32)
    err = np.abs(back - x.astype(np.int32))
    mag = np.minimum(np.abs(x.astype(np.int32)), 32635) + 0x84
    segment = np.clip(np.floor(np.log2(mag)).astype(int) - 7, 0, 7)
    step = 1 << (segment + 3)  # quantisation step of each G.711 segment
    in_range = np.abs(x.astype(np.int32)) <= 32635
    # Encoding truncates within a step and decoding returns the step's middle: |err| <= step/2.
    assert np.all(err[in_range] <= step[in_range] // 2)
    # Beyond the clip level the error is the clip distance plus at most half the top step.
    assert np.all(err[~in_range] <= (np.abs(x.astype(np.int32)) - 32635)[~in_range] + 512)
    # Monotonic: a bigger input never decodes smaller.
    assert np.all(np.diff(back) >= 0)


def test_mulaw_encode_exact_on_table_values() -> None:
    table = mulaw_decode(bytes(range(256)))
    # Every decodable value encodes back to a byte that decodes to itself (0 has two codes).
    np.testing.assert_array_equal(mulaw_decode(mulaw_encode(table)), table)


# -- float_to_s16le ---------------------------------------------------------------------------
def test_float_to_s16le_clips_and_never_wraps() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, -1.5, 100.0, -100.0, 0.99999], np.float32)
    out = np.frombuffer(float_to_s16le(x), "<i2")
    assert out.tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 32767, -32768, 32767]


def test_float_to_s16le_rounds_to_nearest_and_maps_nan_to_zero() -> None:
    x = np.array([0.6 / 32768, -0.6 / 32768, 0.4 / 32768, np.nan], np.float32)
    assert np.frombuffer(float_to_s16le(x), "<i2").tolist() == [1, -1, 0, 0]


def test_float_to_s16le_round_trip() -> None:
    samples = _random_s16(1000)
    np.testing.assert_array_equal(
        np.frombuffer(float_to_s16le(int16_to_float(samples)), "<i2"), samples
    )


def test_float_to_s16le_float64_input() -> None:
    out = np.frombuffer(float_to_s16le(np.array([2.0, -2.0, 0.25])), "<i2")
    assert out.tolist() == [32767, -32768, 8192]


# -- StreamingResampler -----------------------------------------------------------------------
# Max |chunked - one-shot| measured for these sines with soxr 1.1.0: 0.0 (bit-identical, lengths
# equal); the bound leaves room for float rounding in other soxr builds.
RESAMPLE_MATCH_TOL = 1e-4


@pytest.mark.parametrize("in_rate", [44100, 8000, 48000, 22050])
def test_streaming_resampler_matches_one_shot(in_rate: int) -> None:
    out_rate = 16000
    signal = _sine(in_rate, 1.5)
    one_shot = soxr.resample(signal, in_rate, out_rate)
    rng = np.random.default_rng(in_rate)
    resampler = StreamingResampler(in_rate, out_rate)
    pieces = []
    pos = 0
    while pos < len(signal):
        n = int(rng.integers(1, 2000))
        pieces.append(resampler.process(signal[pos : pos + n]))
        pos += n
    pieces.append(resampler.process(np.zeros(0, np.float32), last=True))
    chunked = np.concatenate(pieces)
    expected_len = len(signal) * out_rate / in_rate
    assert abs(len(chunked) - expected_len) <= 2
    assert abs(len(chunked) - len(one_shot)) <= 2
    n = min(len(chunked), len(one_shot))
    assert np.max(np.abs(chunked[:n] - one_shot[:n])) < RESAMPLE_MATCH_TOL
    assert chunked.dtype == np.float32


def test_streaming_resampler_keeps_the_tone() -> None:
    # A 1 kHz tone at 8 kHz -> 16 kHz is still a 1 kHz tone (peak of the spectrum).
    resampler = StreamingResampler(8000, 16000)
    signal = _sine(8000, 1.0, hz=1000.0)
    out = np.concatenate(
        [resampler.process(c) for c in np.array_split(signal, 37)]
        + [resampler.process(np.zeros(0, np.float32), last=True)]
    )
    spectrum = np.abs(np.fft.rfft(out[1000:-1000]))
    peak_hz = np.argmax(spectrum) * 16000 / len(out[1000:-1000])
    assert abs(peak_hz - 1000.0) < 5.0


def test_resampler_same_rate_is_passthrough() -> None:
    resampler = StreamingResampler(16000, 16000)
    x = np.arange(10, dtype=np.float64)
    out = resampler.process(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32))
    assert len(resampler.process(np.zeros(0, np.float32), last=True)) == 0


# -- AudioInput -------------------------------------------------------------------------------
def test_audio_input_s16le_44100_any_frames() -> None:
    signal = _sine(44100, 1.0)
    data = float_to_s16le(signal)
    audio_in = AudioInput(Encoding.PCM_S16LE, 44100, 16000)
    pieces = [audio_in.feed(data[i : i + 777]) for i in range(0, len(data), 777)]
    pieces.append(audio_in.flush())
    got = np.concatenate(pieces)
    expected = soxr.resample(int16_to_float(np.frombuffer(data, "<i2")), 44100, 16000)
    assert abs(len(got) - 16000) <= 2
    n = min(len(got), len(expected))
    assert np.max(np.abs(got[:n] - expected[:n])) < RESAMPLE_MATCH_TOL


def test_audio_input_mulaw_8k() -> None:
    signal = _sine(8000, 0.5, hz=300.0)
    pcm = np.frombuffer(float_to_s16le(signal), "<i2")
    data = mulaw_encode(pcm)
    audio_in = AudioInput(Encoding.PCM_MULAW, 8000, 16000)
    got = np.concatenate(
        [audio_in.feed(data[i : i + 160]) for i in range(0, len(data), 160)] + [audio_in.flush()]
    )
    expected = soxr.resample(int16_to_float(mulaw_decode(data)), 8000, 16000)
    assert abs(len(got) - 8000) <= 2
    n = min(len(got), len(expected))
    assert np.max(np.abs(got[:n] - expected[:n])) < RESAMPLE_MATCH_TOL


def test_audio_input_f32le_48k_matches_one_shot_and_survives_nan() -> None:
    signal = _sine(48000, 1.0, amp=0.9)
    audio_in = AudioInput(Encoding.PCM_F32LE, 48000, 16000)
    data = signal.astype("<f4").tobytes()
    got = np.concatenate(
        [audio_in.feed(data[i : i + 1023]) for i in range(0, len(data), 1023)] + [audio_in.flush()]
    )
    expected = soxr.resample(signal, 48000, 16000)
    assert abs(len(got) - 16000) <= 2
    n = min(len(got), len(expected))
    assert np.max(np.abs(got[:n] - expected[:n])) < RESAMPLE_MATCH_TOL
    # NaN and inf in the stream: the resampler sees silence / full scale, never a NaN.
    bad = np.full(4800, np.nan, np.float32)
    bad[::2] = np.inf
    audio_in = AudioInput(Encoding.PCM_F32LE, 48000, 16000)
    out = np.concatenate([audio_in.feed(bad.astype("<f4").tobytes()), audio_in.flush()])
    assert len(out) > 0 and np.all(np.isfinite(out))


def test_audio_input_16k_is_exact() -> None:
    samples = _random_s16(1000)
    data = samples.astype("<i2").tobytes()
    audio_in = AudioInput(Encoding.PCM_S16LE, 16000, 16000)
    got = np.concatenate([audio_in.feed(data[:3]), audio_in.feed(data[3:]), audio_in.flush()])
    np.testing.assert_array_equal(got, int16_to_float(samples))


# -- SampleBuffer -----------------------------------------------------------------------------
def test_sample_buffer_append_consume_view_with_growth() -> None:
    buf = SampleBuffer(capacity=4)
    reference: list[float] = []
    rng = np.random.default_rng(7)
    counter = 0
    for _ in range(300):
        n = int(rng.integers(0, 50))
        chunk = np.arange(counter, counter + n, dtype=np.float32)
        counter += n
        buf.append(chunk)
        reference.extend(chunk.tolist())
        if rng.random() < 0.4:
            k = int(rng.integers(0, 60))
            out = buf.consume(k)
            assert out.tolist() == reference[: min(k, len(reference))]
            del reference[: len(out)]
        assert len(buf) == len(reference)
        assert buf.view().tolist() == reference


def test_sample_buffer_consume_returns_copy_and_view_is_live() -> None:
    buf = SampleBuffer(capacity=8)
    buf.append(np.arange(6, dtype=np.float32))
    out = buf.consume(2)
    out[:] = -1
    assert buf.view().tolist() == [2, 3, 4, 5]
    buf.consume(100)  # more than held: takes what is there
    assert len(buf) == 0
    buf.append(np.ones(3, np.float32))
    assert buf.view().tolist() == [1, 1, 1]
    buf.clear()
    assert len(buf) == 0 and len(buf.view()) == 0


def test_sample_buffer_growth_is_amortised() -> None:
    buf = SampleBuffer(capacity=1)
    reallocations = 0
    storage = buf._data  # noqa: SLF001 - counting reallocations is the point
    for _ in range(10_000):
        buf.append(np.ones(512, np.float32))
        if buf._data is not storage:  # noqa: SLF001
            reallocations += 1
            storage = buf._data  # noqa: SLF001
    assert len(buf) == 10_000 * 512
    assert reallocations <= 25  # doubling: log2(5.12e6) ~ 23


def test_sample_buffer_front_consumption_reuses_storage() -> None:
    # A sliding window (append one, consume one) must not grow without bound.
    buf = SampleBuffer(capacity=1024)
    for i in range(2000):
        buf.append(np.full(512, i, np.float32))
        if len(buf) > 1024:
            buf.consume(512)
    assert len(buf) == 1024
    assert len(buf._data) <= 4 * 1024  # noqa: SLF001
    assert buf.view()[:512].tolist() == [1998.0] * 512
