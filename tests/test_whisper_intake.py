"""whisper_streaming.intake: a session's audio on its way to the VAD, and the stream's Silero
state handed to one VAD job at a time and back."""

from __future__ import annotations

import numpy as np

from speech_common.audio import Encoding
from speech_common.vad import WINDOW_SAMPLES, VadResult, VadStreamState
from whisper_streaming.intake import AudioIntake


def pcm(samples: int, value: int = 1000) -> bytes:
    return np.full(samples, value, "<i2").tobytes()


def test_whole_windows_go_to_one_job_at_a_time_with_the_state() -> None:
    intake = AudioIntake(Encoding.PCM_S16LE, 16000)
    assert intake.next_job() is None  # nothing yet
    intake.feed(pcm(700), now=0.1)
    state, windows = intake.next_job()
    assert windows.shape == (1, WINDOW_SAMPLES) and isinstance(state, VadStreamState)
    intake.feed(pcm(1000), now=0.2)
    assert intake.job_in_flight and intake.next_job() is None  # the state is out with the job
    advanced = VadStreamState.fresh()
    assert intake.job_done(VadResult(np.zeros(1), advanced)) is windows
    next_state, next_windows = intake.next_job()
    assert next_state is advanced  # the state came back with the result and goes on
    assert len(next_windows) == (700 - WINDOW_SAMPLES + 1000) // WINDOW_SAMPLES


def test_backlog_counts_what_the_vad_has_not_been_given() -> None:
    intake = AudioIntake(Encoding.PCM_S16LE, 16000)
    intake.feed(pcm(16000), now=0.0)
    assert intake.backlog_s == 1.0
    intake.next_job()
    assert intake.backlog_s < WINDOW_SAMPLES / 16000 and not intake.drained


def test_flush_pads_the_last_window_and_then_all_is_drained() -> None:
    intake = AudioIntake(Encoding.PCM_S16LE, 16000)
    intake.feed(pcm(WINDOW_SAMPLES + 10) + b"\x01", now=0.0)  # a split sample at the end
    intake.flush(now=0.5)
    state, windows = intake.next_job()
    assert windows.shape == (2, WINDOW_SAMPLES) and not windows[1, 11:].any()
    intake.job_done(VadResult(np.zeros(2), state))
    assert intake.drained and intake.next_job() is None


def test_audio_is_resampled_to_16_khz_and_arrivals_time_each_sample() -> None:
    intake = AudioIntake(Encoding.PCM_S16LE, 8000)
    intake.feed(pcm(8000), now=1.0)
    intake.feed(pcm(8000), now=2.0)
    assert 32000 - 1024 <= intake.received <= 32000  # the streaming resampler holds some back
    assert intake.arrival_of(100, now=9.0) == 1.0
    assert intake.arrival_of(intake.received, now=9.0) == 2.0
    assert intake.arrival_of(intake.received + 1, now=9.0) == 9.0  # not arrived yet


def test_a_lost_job_leaves_no_job_in_flight() -> None:
    intake = AudioIntake(Encoding.PCM_S16LE, 16000)
    intake.feed(pcm(WINDOW_SAMPLES), now=0.0)
    intake.next_job()
    intake.job_lost()
    assert not intake.job_in_flight
