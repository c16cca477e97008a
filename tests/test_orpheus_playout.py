"""``Playout`` (the TTS core's line to the client) on its own: order, clear, encode jobs."""

from __future__ import annotations

import numpy as np

from orpheus_tts.audio_format import (
    AudioEncoder,
    AudioFormat,
    EncoderOp,
    default_rate,
    run_encode_job,
)
from orpheus_tts.playout import END, Chunk, Playout
from orpheus_tts.schema import AudioDone, AudioStart, FlushDone

RATE = 24000


def _pcm(samples: int = 2048, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 180 * np.arange(samples) / RATE) + 0.01 * rng.standard_normal(
        samples
    )
    return (x * 32767).astype("<i2").tobytes()


def _playout(fmt: AudioFormat) -> Playout:
    return Playout(AudioEncoder(fmt, default_rate(fmt)))


def _start(n: int) -> AudioStart:
    return AudioStart(generation=n, text="hi", start_s=0.0)


def test_pcm_goes_out_at_once_in_order_with_no_job() -> None:
    line = _playout(AudioFormat.PCM_S16LE)
    a, b = _pcm(seed=1), _pcm(seed=2)
    line.add([_start(1)])
    line.add_audio(a, "g1")
    line.add_audio(b, "g1")
    done = AudioDone(generation=1, text="hi", start_s=0.0, end_s=line.timeline_s())
    line.add([done, EncoderOp.FINISH, FlushDone(id="t")])
    drained = line.drain()
    assert drained.job is None and line.job is None
    items = [item for item, _ in drained.ready]
    assert items[0] == _start(1) and items[3:] == [done, EncoderOp.FINISH, FlushDone(id="t")]
    assert [(c.pcm, c.owner) for c in items[1:3]] == [(a, "g1"), (b, "g1")]
    assert [data for _, data in drained.ready[1:3]] == [a, b]  # the published format: as is
    assert line.timeline_s() == round(2 * 2048 / RATE, 4)
    assert line.drain().ready == []  # nothing left


def test_nothing_is_taken_after_the_end() -> None:
    line = _playout(AudioFormat.WAV)
    line.add([EncoderOp.FINISH, END, FlushDone(id="late")])
    assert [item for item, _ in line.drain().ready] == [EncoderOp.FINISH, END]


def test_an_ffmpeg_codec_runs_in_one_job_at_a_time_and_keeps_the_order() -> None:
    line = _playout(AudioFormat.MP3)
    line.add([_start(1)])
    line.add_audio(_pcm(seed=1), "g1")
    first = line.drain()
    # The event before the audio goes out now; the chunk goes to a job with the encoder.
    assert [item for item, _ in first.ready] == [_start(1)]
    batch, job = first.job
    assert line.job is batch and line.encoder is None and job.encoder is not None
    assert len(job.ops) == 1 and isinstance(job.ops[0], bytes)
    # While it is out, what comes next waits, even an event: it is due after the audio.
    line.add_audio(_pcm(seed=2), "g1")
    line.add([EncoderOp.FINISH, FlushDone(id="t")])
    assert line.drain().ready == [] and line.drain().job is None
    ready = line.job_done(run_encode_job(job))
    assert line.encoder is job.encoder and line.job is None
    assert [type(item) for item, _ in ready] == [Chunk]
    second = line.drain()
    assert second.ready == []
    batch2, job2 = second.job
    assert [item for item, _ in batch2.items][1:] == [EncoderOp.FINISH, FlushDone(id="t")]
    assert job2.ops[1:] == (EncoderOp.FINISH,) and isinstance(job2.ops[0], bytes)
    ready = line.job_done(run_encode_job(job2))
    assert [item for item, _ in ready][1:] == [EncoderOp.FINISH, FlushDone(id="t")]
    assert ready[2][1] == b""  # an event has no encoder output
    assert b"".join(data for _, data in ready[:2])  # the stream's frames and its tail


def test_a_finish_with_no_stream_needs_no_job() -> None:
    line = _playout(AudioFormat.OPUS)
    line.add([EncoderOp.FINISH, FlushDone(id="t"), EncoderOp.RESET])
    drained = line.drain()
    assert drained.job is None
    assert drained.ready == [(EncoderOp.FINISH, b""), (FlushDone(id="t"), b""),
                             (EncoderOp.RESET, b"")]  # fmt: skip


def test_drop_removes_queued_items_and_a_jobs_items() -> None:
    line = _playout(AudioFormat.MP3)
    line.add_audio(_pcm(seed=1), "g1")
    batch, job = line.drain().job
    line.add([_start(2)])
    line.add_audio(_pcm(seed=2), "g2")
    line.add([FlushDone(id="kept")])
    cleared = {"g1", "g2"}
    line.drop(lambda item: (isinstance(item, Chunk) and item.owner in cleared)
              or isinstance(item, AudioStart))  # fmt: skip
    assert batch.items == []  # the job's audio is not sent when it comes back
    assert line.job_done(run_encode_job(job)) == []
    assert line.drain().ready == [(FlushDone(id="kept"), b"")]


def test_pcm_drop_and_close() -> None:
    line = _playout(AudioFormat.PCM_S16LE)
    line.add_audio(_pcm(), "g1")
    line.add([FlushDone(id="t")])
    line.drop(lambda item: isinstance(item, Chunk))
    assert line.drain().ready == [(FlushDone(id="t"), b"")]
    line.add_audio(_pcm(), "g1")
    line.close()
    assert line.drain().ready == [] and line.job is None
