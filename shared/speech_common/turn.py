"""End-of-turn detection: has the speaker finished, or only paused mid-sentence?

``log_mel_features`` is pipecat's Smart Turn v3 front end in numpy (pure, sans-I/O): the last
8 s of the turn, Whisper's log-mel. ``SmartTurn`` scores many streams' turns in one batched
call of the Smart Turn v3 ONNX model, one shared inference session for all streams.

The model is bundled (``assets/smart_turn_v3.onnx``, BSD-2-Clause, see
``assets/SMART_TURN_LICENSE``): pipecat's wheel ships it with pipecat's whole dependency tree,
and upstream (pipecat-ai/smart-turn) computes its features with transformers; the STT image
carries neither, only numpy and onnxruntime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .audio import WHISPER_RATE_HZ
from .onnx_session import cpu_session

# Smart Turn v3.2 (CPU, int8) exactly as the pipecat-ai 1.14.0 wheel ships it
# (pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx).
SMART_TURN_ONNX_PATH = Path(__file__).resolve().parent / "assets" / "smart_turn_v3.onnx"
SMART_TURN_ONNX_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"

# -- how pipecat uses the model (pipecat-ai 1.14.0) ----------------------------------------------
# P(complete) above this is the end of the turn (local_smart_turn_v3.py:174, `probability > 0.5`).
COMPLETE_THRESHOLD = 0.5
# The model hears the turn's last 8 s (local_smart_turn_v3.py:161; base_smart_turn.py:29
# MAX_DURATION_SECONDS caps the segment at the same 8 s).
TURN_CONTEXT_S = 8
# pipecat asks the model once the VAD has heard this much silence (vad_analyzer.py:27
# VAD_STOP_SECS, "the recommended default" its turn-stop strategies warn about) ...
VAD_STOP_S = 0.2
# ... and ends the turn after this much silence whatever the model said (base_smart_turn.py:27
# STOP_SECS).
TURN_STOP_S = 3.0
# The turn's audio starts this long before its speech did (base_smart_turn.py:28 PRE_SPEECH_MS).
PRE_SPEECH_MS = 500

# -- Whisper's front end as pipecat's _whisper_features.py computes it (its math is transformers'
# WhisperFeatureExtractor, Apache-2.0, which pipecat vendors in numpy) ---------------------------
SAMPLE_RATE_HZ = WHISPER_RATE_HZ  # the model's rate (local_smart_turn_v3.py _MODEL_SAMPLE_RATE)
TURN_CONTEXT_SAMPLES = TURN_CONTEXT_S * SAMPLE_RATE_HZ
N_FFT = 400  # 25 ms frames
HOP_SAMPLES = 160  # 10 ms hop
N_MELS = 80
N_FRAMES = TURN_CONTEXT_SAMPLES // HOP_SAMPLES  # 800: the model's fixed time axis
MEL_FLOOR = 1e-10
NORM_VARIANCE_EPS = 1e-7
LOG_DYNAMIC_RANGE = 8.0  # log10 units kept below the loudest bin (Whisper's 80 dB)


def _mel_filterbank() -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters, (N_FFT // 2 + 1, N_MELS), float64:
    transformers' ``mel_filter_bank(..., norm="slaney", mel_scale="slaney")`` as pipecat
    vendors it."""
    min_log_hz, min_log_mel = 1000.0, 15.0
    mels_per_log, logs_per_mel = 27.0 / np.log(6.4), np.log(6.4) / 27.0  # both, as upstream

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(
            hz >= min_log_hz,
            min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) * mels_per_log,
            3.0 * hz / 200.0,
        )

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(
            mel >= min_log_mel,
            min_log_hz * np.exp(logs_per_mel * (mel - min_log_mel)),
            200.0 * mel / 3.0,
        )

    edges = hz_to_mel(np.array([0.0, SAMPLE_RATE_HZ / 2.0]))
    filter_hz = mel_to_hz(np.linspace(edges[0], edges[1], N_MELS + 2))
    fft_hz = np.linspace(0, SAMPLE_RATE_HZ // 2, N_FFT // 2 + 1)
    slopes = filter_hz[None, :] - fft_hz[:, None]
    widths = np.diff(filter_hz)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (filter_hz[2:] - filter_hz[:-2]))[None, :]


_MEL_FILTERS = _mel_filterbank()
_HANN = np.hanning(N_FFT + 1)[:-1]  # periodic, as torch.hann_window


def log_mel_features(audio: np.ndarray) -> np.ndarray:
    """(N_MELS, N_FRAMES) float32 features of a turn's 16 kHz mono float audio: its last
    TURN_CONTEXT_S, zero-padded at the start when shorter, normalised to zero mean and unit
    variance, Whisper's log-mel. pipecat's ``truncate_audio_to_last_n_seconds`` followed by
    ``compute_whisper_log_mel_features(..., do_normalize=True)``, in the same dtypes, so the
    model sees what it saw in pipecat."""
    if audio.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {audio.shape}")
    x = np.asarray(audio[-TURN_CONTEXT_SAMPLES:], dtype=np.float32)
    x = np.pad(x, (TURN_CONTEXT_SAMPLES - len(x), 0))
    # Normalised in float32 over the padded 8 s, before the spectrogram, as the reference does.
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_VARIANCE_EPS)
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")  # centred frames
    frames = sliding_window_view(padded, N_FFT)[::HOP_SAMPLES]
    power = np.abs(np.fft.rfft(frames * _HANN, axis=-1)) ** 2  # (frames, bins)
    log_spec = np.log10(np.maximum(MEL_FLOOR, _MEL_FILTERS.T @ power.T))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - LOG_DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


class SmartTurn:
    """Smart Turn v3 (the bundled ONNX model); one session shared by all streams."""

    def __init__(self, onnx_path: str | Path = SMART_TURN_ONNX_PATH, threads: int = 1) -> None:
        self._session = cpu_session(onnx_path, threads)
        # One input, (batch, N_MELS, N_FRAMES); its batch axis is symbolic ("s6", checked by
        # tests/test_turn.py), so a batch of turns is one run.
        (model_input,) = self._session.get_inputs()
        self._input = model_input.name

    def probabilities(self, audios: list[np.ndarray]) -> np.ndarray:
        """P(the turn is complete) for each turn's audio so far (float32, 16 kHz mono)."""
        if not audios:
            return np.zeros(0, np.float32)
        features = np.stack([log_mel_features(a) for a in audios])
        (out,) = self._session.run(None, {self._input: features})
        # Output "logits" (batch, 1) is already P(complete): the graph ends in a sigmoid (as
        # pipecat's local_smart_turn_v3.py reads it).
        return out[:, 0].astype(np.float32)
