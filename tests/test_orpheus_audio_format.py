"""The session's output encoder: every format and rate decodes with an independent decoder
(FFmpeg through PyAV, Python's ``wave``, numpy) to the expected duration; μ-law and A-law match
the G.711 reference (Sun's g711.c, written out below); the published format passes through."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest

from orpheus_tts.audio_format import (
    MODEL_RATE_HZ,
    OPUS_RATES_HZ,
    SUPPORTED_RATES_HZ,
    AudioEncoder,
    AudioFormat,
    check_format,
)
from speech_common.ws import ProtocolError

CHUNK_BYTES = 4096  # about what one SNAC window gives (2048 samples)
MP3_ENCODER_DELAY = 1105  # lame's priming samples: streams have no gapless header to undo them
CODEC_FRAME = {AudioFormat.MP3: 1152, AudioFormat.OPUS: 960}  # samples (mp3: at ≥ 32 kHz)


def _speechlike(seconds: float, rate: int = MODEL_RATE_HZ) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave_ = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (wave_ * 32767).astype("<i2").tobytes()


def _encode(fmt: AudioFormat, rate: int, pcm: bytes, finish: bool = True) -> bytes:
    encoder = AudioEncoder(fmt, rate)
    out = b"".join(
        encoder.encode(pcm[i : i + CHUNK_BYTES]) for i in range(0, len(pcm), CHUNK_BYTES)
    )
    return out + (encoder.finish() if finish else b"")


def decode(fmt: AudioFormat, rate: int, data: bytes) -> np.ndarray:
    """Float samples at ``rate``, by a decoder that is not ours."""
    if fmt is AudioFormat.PCM_S16LE:
        return np.frombuffer(data, "<i2") / 32768.0
    if fmt is AudioFormat.PCM_F32LE:
        return np.frombuffer(data, "<f4").astype(np.float64)
    if fmt is AudioFormat.WAV:
        with wave.open(io.BytesIO(data)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
            return np.frombuffer(w.readframes(len(data)), "<i2") / 32768.0
    container = {AudioFormat.OPUS: "ogg"}.get(fmt, fmt.value)
    options = {"sample_rate": str(rate), "ch_layout": "mono"} if fmt.value.endswith("law") else {}
    with av.open(io.BytesIO(data), format=container, options=options) as c:
        frames = [f.to_ndarray() for f in c.decode(audio=0)]
        decoded_rate = c.streams.audio[0].rate
    samples = np.concatenate(frames, axis=1)[0].astype(np.float64)
    if samples.dtype.kind == "i" or np.abs(samples).max() > 2:
        samples = samples / 32768.0
    # libopus decodes at 48 kHz whatever the input rate: compare durations in seconds.
    return samples if decoded_rate == rate else samples[:: max(decoded_rate // rate, 1)]


FORMAT_RATES = [
    (fmt, rate)
    for fmt in AudioFormat
    for rate in SUPPORTED_RATES_HZ
    if fmt is not AudioFormat.OPUS or rate in OPUS_RATES_HZ
]


@pytest.mark.parametrize(("fmt", "rate"), FORMAT_RATES, ids=lambda v: str(v))
def test_every_format_and_rate_decodes_to_the_expected_duration(fmt, rate) -> None:
    seconds = 1.5
    samples = decode(fmt, rate, _encode(fmt, rate, _speechlike(seconds)))
    expected = seconds * rate
    frame = CODEC_FRAME.get(fmt, 1) * (rate / 48000 if fmt is AudioFormat.OPUS else 1)
    slack = frame + (MP3_ENCODER_DELAY if fmt is AudioFormat.MP3 else 0) + 1
    assert abs(len(samples) - expected) <= slack, (len(samples), expected)
    assert np.abs(samples).max() > 0.1  # sound, not silence


def test_published_format_passes_through_untouched() -> None:
    pcm = _speechlike(0.5)
    encoder = AudioEncoder(AudioFormat.PCM_S16LE, MODEL_RATE_HZ)
    assert encoder.encode(pcm) == pcm and encoder.finish() == b""
    assert encoder.samples_out == len(pcm) // 2


def test_codec_output_starts_before_the_stream_ends() -> None:
    """Streaming: the first bytes of every format come with the first chunks, not at finish."""
    pcm = _speechlike(1.0)
    for fmt in AudioFormat:
        encoder = AudioEncoder(fmt, 24000)
        early = b"".join(
            encoder.encode(pcm[i : i + CHUNK_BYTES]) for i in range(0, 5 * CHUNK_BYTES, CHUNK_BYTES)
        )
        assert len(early) > 100, fmt


@pytest.mark.parametrize(("fmt", "rate"), [(AudioFormat.MP3, 24000), (AudioFormat.OPUS, 48000),
                                          (AudioFormat.WAV, 16000), (AudioFormat.MULAW, 8000)])  # fmt: skip
def test_turns_are_whole_files_that_concatenate(fmt, rate) -> None:
    """Each turn of an event session ends with ``finish``: a codec's turn is a whole file, and
    the turns written one after another (what a client appending every byte gets) decode too,
    to the sum of their durations."""
    encoder = AudioEncoder(fmt, rate)
    turns = [encoder.encode(_speechlike(0.4)) + encoder.finish() for _ in range(3)]
    finish_again = encoder.finish()  # a flush with nothing new: nothing, no error
    assert finish_again == b""
    if fmt in (AudioFormat.MP3, AudioFormat.OPUS):
        for turn in turns:
            assert abs(len(decode(fmt, rate, turn)) - 0.4 * rate) <= 1105 + 1152
    if fmt is AudioFormat.WAV:
        assert turns[0][:4] == b"RIFF" and b"RIFF" not in turns[1] + turns[2]  # one header
    whole = decode(fmt, rate, b"".join(turns))
    slack = 3 * (1105 + 1152) if fmt is AudioFormat.MP3 else 3 * 960 + 3
    assert abs(len(whole) - 1.2 * rate) <= slack, (len(whole), 1.2 * rate)


def test_reset_drops_what_the_codec_holds() -> None:
    encoder = AudioEncoder(AudioFormat.MP3, 24000)
    encoder.encode(_speechlike(0.05))  # less than lame's delay: nothing out yet
    encoder.reset()
    assert encoder.finish() == b""  # nothing of it comes out later


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [(AudioFormat.OPUS, 22050), (AudioFormat.OPUS, 44100), (AudioFormat.WAV, 11025)],
)
def test_unsupported_rates_are_a_typed_1003(fmt, rate) -> None:
    with pytest.raises(ProtocolError) as err:
        check_format(fmt, rate)
    assert err.value.error_type == "unsupported_sample_rate" and err.value.close_code == 1003


# -- G.711 reference (Sun Microsystems' g711.c, public domain) ---------------------------------
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    return next((i for i, end in enumerate(ends) if value <= end), len(ends))


def ref_ulaw(pcm: int) -> int:
    value = pcm >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + (0x84 >> 2)
    seg = _segment(value, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0xF)) ^ mask


def ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def ref_alaw(pcm: int) -> int:
    value = pcm >> 3
    mask = 0xD5
    if value < 0:
        value, mask = -value - 1, 0x55
    seg = _segment(value, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (value >> 1) & 0xF if seg < 2 else (value >> seg) & 0xF
    return aval ^ mask


def ref_alaw_decode(code: int) -> int:
    code ^= 0x55
    t = (code & 0xF) << 4
    seg = (code & 0x70) >> 4
    t = t + 8 if seg == 0 else (t + 0x108) << max(seg - 1, 0)
    return t if code & 0x80 else -t


@pytest.mark.parametrize(
    ("fmt", "encode", "decode_"),
    [(AudioFormat.MULAW, ref_ulaw, ref_ulaw_decode), (AudioFormat.ALAW, ref_alaw, ref_alaw_decode)],
)
def test_g711_matches_the_reference_tables_within_one_lsb(fmt, encode, decode_) -> None:
    """Every 16-bit value (at the model's rate, so no resampling): our code, decoded with the
    reference table, is the reference round trip within one quantisation step."""
    values = np.arange(-32768, 32768, dtype=np.int64)
    ours = _encode(fmt, MODEL_RATE_HZ, values.astype("<i2").tobytes())
    assert len(ours) == len(values)
    levels = np.unique([decode_(code) for code in range(256)])  # the 8-bit code's levels
    ours_rank = np.searchsorted(levels, [decode_(c) for c in ours])
    reference_rank = np.searchsorted(levels, [decode_(encode(int(v))) for v in values])
    assert np.abs(ours_rank - reference_rank).max() <= 1  # at most one code apart


def test_gain_in_db_scales_the_samples() -> None:
    pcm = _speechlike(0.2)
    quiet = AudioEncoder(AudioFormat.PCM_S16LE, MODEL_RATE_HZ, gain_db=-20.0).encode(pcm)
    ratio = np.abs(np.frombuffer(quiet, "<i2")).max() / np.abs(np.frombuffer(pcm, "<i2")).max()
    assert abs(ratio - 0.1) < 0.001
