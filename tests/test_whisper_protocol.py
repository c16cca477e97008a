"""The STT protocol core, driven without sockets, threads or clocks: unit cases, then hypothesis
over arbitrary interleavings of frames, job results (in any order, failed or not), timers and
disconnects. Every run must end, release every job it started, and keep the protocol's order."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scripts.clients.stt import v1_metadata
from speech_common.driver import Cancel, Close, Command, JobCancelled, Send, Submit
from speech_common.vad import WINDOW_SAMPLES, VadResult, VadStreamState
from speech_common.ws import load_json
from whisper_streaming.codec_session import CodecSession
from whisper_streaming.engine import JobKind, Segment, Transcript
from whisper_streaming.protocol import (
    MAX_AUDIO_FRAME_BYTES,
    TURN_WORKER,
    VAD_WORKER,
    WHISPER_WORKER,
    CoreLimits,
)
from whisper_streaming.stability import normalise

SPEECH, SILENCE = 0.95, 0.01
FIRST_FRAME_TIMEOUT_S = 5.0


def transcript(text: str) -> Transcript:
    return Transcript([Segment(text, 0.0, 1.0, -0.1, 0.01)], "en", None)


@dataclass
class Harness:
    """Feeds a core and checks every command it answers with against the protocol's rules."""

    core: CodecSession = field(
        default_factory=lambda: CodecSession.baseten(
            CoreLimits(first_frame_timeout_s=FIRST_FRAME_TIMEOUT_S), ["en"]
        )
    )
    now: float = 0.0
    jobs: dict[int, Submit] = field(default_factory=dict)  # outstanding, as the driver sees them
    submitted: set[int] = field(default_factory=set)
    sent: list[dict] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.apply(self.core.start(self.now))

    def apply(self, commands: list[Command]) -> None:
        for command in commands:
            assert not self.closes, f"{command} after the close"
            if isinstance(command, Send):
                self.sent.append(command.message)
            elif isinstance(command, Submit):
                assert command.job_id not in self.submitted, "job id reused"
                self.submitted.add(command.job_id)
                self.jobs[command.job_id] = command
            elif isinstance(command, Cancel):
                self.jobs.pop(command.job_id, None)
            elif isinstance(command, Close):
                self.closes.append(command)
        if self.core.done:
            assert not self.jobs, f"ended with jobs outstanding: {sorted(self.jobs)}"
            assert self.core.outstanding_jobs == frozenset()

    # inputs
    def text(self, payload: object) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.apply(self.core.on_text(text, self.now))

    def audio(self, samples: int) -> None:
        self.apply(self.core.on_bytes(b"\x00\x01" * samples, self.now))

    def resolve(
        self,
        job_id: int,
        speech: list[bool] | None = None,
        fail: bool = False,
        turn_score: float = 0.9,
        final_text: str = "final words",
    ) -> None:
        command = self.jobs.pop(job_id)
        if fail:
            result: object = RuntimeError("model failed")
        elif command.worker == TURN_WORKER:
            result = turn_score
        elif command.worker == VAD_WORKER:
            windows = command.payload[1]
            pattern = speech or [False]
            probs = [SPEECH if pattern[i % len(pattern)] else SILENCE for i in range(len(windows))]
            result = VadResult(np.array(probs), command.payload[0])
        else:
            kind = command.payload.kind
            result = transcript(final_text if kind is JobKind.FINAL else "partial words")
        self.apply(self.core.on_result(job_id, result, self.now))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.core.on_timer(self.now))

    def disconnect(self) -> None:
        self.apply(self.core.on_disconnect(self.now))

    def drain(self) -> None:
        """Answer every job (silence from the VAD) until none is outstanding."""
        for _ in range(10_000):
            if not self.jobs:
                return
            self.resolve(min(self.jobs))
        raise AssertionError("jobs keep coming")

    # checks
    def check_order(self) -> None:
        finals_seen: set[int] = set()
        last_final = last_final_with_words = -1
        finished = 0
        words_since_turn_end = False
        for message in self.sent:
            if message.get("type") == "end_of_turn":
                # after the turn's last final with words (an empty final may follow it), once
                # per turn
                assert message["transcription_num"] == last_final_with_words, (
                    "end_of_turn before its final"
                )
                assert words_since_turn_end, "end_of_turn without words since the last one"
                words_since_turn_end = False
            elif message.get("type") == "transcription":
                num = message["transcription_num"]
                if message["is_final"]:
                    assert num > last_final, "finals out of order"
                    last_final = num
                    finals_seen.add(num)
                    if message["transcript"]:
                        last_final_with_words = num
                        words_since_turn_end = True
                else:
                    assert num not in finals_seen, f"partial {num} after its final"
            elif message.get("type") == "end_audio" and message["body"]["status"] == "finished":
                finished += 1
            elif message.get("type") == "error":
                assert message["body"].get("recoverable"), "a fatal error goes with a close"
        assert finished <= 1
        if finished:
            assert self.sent[-1]["body"]["status"] == "finished"
            assert self.closes and self.closes[0].code == 1000
        assert len(self.closes) <= 1


def speak(h: Harness, seconds: float, speech: bool = True) -> None:
    """Audio in 512-sample frames, each VAD job answered (speech or silence) as it comes."""
    for _ in range(int(seconds * 16000 / WINDOW_SAMPLES)):
        h.audio(WINDOW_SAMPLES)
        for job_id, job in sorted(h.jobs.items()):
            if job.worker == VAD_WORKER:
                h.resolve(job_id, [speech])


# -- unit cases ---------------------------------------------------------------------------------
def test_utterance_final_and_clean_end() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0, speech=True)
    speak(h, 0.6, speech=False)  # > 300 ms of silence ends the utterance
    h.drain()
    h.text({"type": "end_audio"})
    h.drain()
    assert [m["type"] for m in h.sent] == ["transcription", "end_audio", "end_audio"]
    assert h.sent[0]["is_final"] and h.sent[0]["transcript"] == "final words"
    assert h.core.done and h.closes[0].code == 1000
    h.check_order()


def test_the_vad_state_travels_with_its_job_and_comes_back_in_the_result() -> None:
    """No worker thread touches state the core holds: the core gives its Silero state to the
    VAD job and takes the one in the result for the next job."""
    h = Harness()
    h.text(v1_metadata(partials=False))
    h.audio(WINDOW_SAMPLES)
    (job_id,) = h.jobs
    first_state = h.jobs[job_id].payload[0]
    advanced = VadStreamState.fresh()
    h.jobs.pop(job_id)
    h.apply(h.core.on_result(job_id, VadResult(np.array([SILENCE]), advanced), h.now))
    h.audio(WINDOW_SAMPLES)
    (next_id,) = h.jobs
    assert h.jobs[next_id].payload[0] is advanced is not first_state


def test_metadata_timeout_and_audio_first() -> None:
    h = Harness()
    h.tick(FIRST_FRAME_TIMEOUT_S + 0.1)
    assert h.closes[0].error.error_type == "metadata_timeout" and h.core.done
    h = Harness()
    h.audio(100)
    assert h.closes[0].error.error_type == "audio_before_metadata"


def test_disconnect_with_a_final_pending_cancels_it() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    assert any(j.worker != VAD_WORKER for j in h.jobs.values())  # the final is pending
    h.disconnect()
    assert h.core.done and not h.jobs and not h.closes  # nobody to close to


def test_bad_control_while_a_final_is_pending_cancels_it() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    h.text({"type": "bogus"})
    assert h.closes[0].code == 1008 and h.closes[0].error.error_type == "invalid_message"
    assert h.core.done and not h.jobs


def test_failed_final_is_recoverable_and_the_session_goes_on() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    (final_id,) = [i for i, j in h.jobs.items() if j.worker != VAD_WORKER]
    h.resolve(final_id, fail=True)
    assert h.sent[-1]["body"] == {
        "error_type": "final_failed",
        "message": "transcription 0 failed; the session continues",
        "recoverable": True,
        "transcription_num": 0,
    }
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    h.drain()
    assert h.sent[-1]["transcription_num"] == 1 and h.sent[-1]["is_final"]
    assert not h.core.done


def _turn_harness(timeout_ms: int = 1000) -> Harness:
    h = Harness()
    h.text(v1_metadata(partials=False, end_of_turn=True, end_of_turn_timeout_ms=timeout_ms))
    return h


def _jobs(h: Harness, worker: str) -> list[int]:
    return sorted(i for i, j in h.jobs.items() if j.worker == worker)


def test_end_of_turn_follows_the_final_the_turn_model_ended() -> None:
    h = _turn_harness()
    speak(h, 1.0)
    speak(h, 0.4, speech=False)  # the utterance ends: its final and a turn score are asked for
    (turn,) = _jobs(h, TURN_WORKER)
    # the turn so far: from the stream's start (its first onset) to the end of its speech
    assert len(h.jobs[turn].payload) == 31 * WINDOW_SAMPLES
    h.resolve(turn, turn_score=0.9)
    assert h.sent == []  # the final is not in yet; the turn end waits behind it
    h.drain()
    assert [m["type"] for m in h.sent] == ["transcription", "end_of_turn"]
    assert h.sent[1] == {
        "type": "end_of_turn",
        "transcription_num": 0,
        "speech_end": 0.992,  # the last speech window's end (31 windows of 32 ms)
        "reason": "model",
        "probability": 0.9,
    }
    h.check_order()


def test_end_of_turn_names_the_turns_last_final_with_words_not_an_empty_one_after_it() -> None:
    """A noise the VAD took for speech, after the words, gets an empty final; the turn's end
    still points at the transcript to act on."""
    h = _turn_harness()
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    h.resolve(_jobs(h, TURN_WORKER)[0], turn_score=0.2)  # not over yet
    h.drain()
    speak(h, 0.5)  # the noise
    speak(h, 0.4, speech=False)
    h.resolve(_jobs(h, TURN_WORKER)[0], turn_score=0.9)
    for job_id in sorted(h.jobs):
        h.resolve(job_id, final_text="")
    finals = [m for m in h.sent if m.get("type") == "transcription"]
    assert [(m["transcription_num"], m["transcript"]) for m in finals] == [
        (0, "final words"),
        (1, ""),
    ]
    assert h.sent[-1]["type"] == "end_of_turn" and h.sent[-1]["transcription_num"] == 0
    h.check_order()


def test_a_low_turn_score_keeps_the_turn_open_until_its_timeout() -> None:
    h = _turn_harness(timeout_ms=1000)
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    h.resolve(_jobs(h, TURN_WORKER)[0], turn_score=0.2)
    h.drain()
    assert [m["type"] for m in h.sent] == ["transcription"]
    speak(h, 0.5, speech=False)  # 0.9 s of silence
    assert [m["type"] for m in h.sent] == ["transcription"]
    speak(h, 0.2, speech=False)  # past 1 s
    assert h.sent[-1]["type"] == "end_of_turn" and h.sent[-1]["reason"] == "timeout"
    assert h.sent[-1]["probability"] == 0.2
    h.check_order()


def test_speech_after_a_pause_continues_the_turn_and_voids_the_score() -> None:
    h = _turn_harness()
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    (turn,) = _jobs(h, TURN_WORKER)
    speak(h, 1.0)  # the speaker goes on before the score comes back
    h.resolve(turn, turn_score=0.99)
    speak(h, 0.4, speech=False)
    for job_id in _jobs(h, TURN_WORKER):
        h.resolve(job_id, turn_score=0.9)
    h.drain()
    types = [m["type"] for m in h.sent]
    assert types == ["transcription", "transcription", "end_of_turn"]
    assert h.sent[-1]["transcription_num"] == 1
    h.check_order()


def _recording(h: Harness) -> list[Command]:
    """Every command the core answers with from now on, in order."""
    seen: list[Command] = []
    apply = h.apply

    def recording(commands: list[Command]) -> None:
        seen.extend(commands)
        apply(commands)

    h.apply = recording
    return seen


def test_the_turn_is_scored_with_the_speculative_final_and_the_score_serves_if_the_pause_lasts():
    h = _turn_harness()
    seen = _recording(h)
    speak(h, 1.0)
    speak(h, 0.2, speech=False)  # speculation (150 ms into the pause): final and turn score
    (early,) = _jobs(h, TURN_WORKER)
    assert [j.payload.kind for j in h.jobs.values() if j.worker == WHISPER_WORKER] == [
        JobKind.FINAL
    ]
    h.resolve(early, turn_score=0.9)  # back before the silence timeout
    speak(h, 0.2, speech=False)  # the pause lasts: the utterance ends, no second score
    assert _jobs(h, TURN_WORKER) == []
    h.drain()
    assert [m["type"] for m in h.sent] == ["transcription", "end_of_turn"]
    assert h.sent[1]["speech_end"] == 0.992 and h.sent[1]["probability"] == 0.9
    turn_submits = [c for c in seen if isinstance(c, Submit) and c.worker == TURN_WORKER]
    assert [c.job_id for c in turn_submits] == [early]
    h.check_order()


def test_an_early_turn_score_still_out_when_the_pause_lasts_is_waited_for() -> None:
    h = _turn_harness()
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    (early,) = _jobs(h, TURN_WORKER)
    for job_id in [i for i, j in h.jobs.items() if j.worker == WHISPER_WORKER]:
        h.resolve(job_id)
    assert h.sent == []  # the final waits for its turn score
    h.resolve(early, turn_score=0.9)
    assert [m["type"] for m in h.sent] == ["transcription", "end_of_turn"]


def test_speech_resuming_after_the_early_turn_score_cancels_it() -> None:
    h = _turn_harness()
    seen = _recording(h)
    speak(h, 1.0)
    speak(h, 0.2, speech=False)
    (early,) = _jobs(h, TURN_WORKER)
    speak(h, 0.5)  # the speaker goes on: the speculation and its turn score are void
    assert early not in h.jobs and any(isinstance(c, Cancel) and c.job_id == early for c in seen)
    speak(h, 0.4, speech=False)
    (second,) = _jobs(h, TURN_WORKER)
    assert second != early and len(h.jobs[second].payload) > 31 * WINDOW_SAMPLES
    h.resolve(second, turn_score=0.9)
    h.drain()
    assert [m["type"] for m in h.sent] == ["transcription", "end_of_turn"]
    h.check_order()


def test_an_early_turn_score_serves_a_turn_longer_than_the_models_8_s() -> None:
    h = _turn_harness(timeout_ms=3000)
    seen = _recording(h)
    speak(h, 9.0)  # one utterance of 9 s: the turn model hears its last 8 s
    speak(h, 0.2, speech=False)  # speculation: the early score
    (early,) = _jobs(h, TURN_WORKER)
    h.resolve(early, turn_score=0.9)
    speak(h, 0.2, speech=False)  # the pause lasts: the same 8 s, no second call
    turn_submits = [c.job_id for c in seen if isinstance(c, Submit) and c.worker == TURN_WORKER]
    assert turn_submits == [early]


def test_a_timeout_while_the_final_is_out_reports_the_score_already_in() -> None:
    h = _turn_harness(timeout_ms=1000)
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    (turn,) = _jobs(h, TURN_WORKER)
    h.resolve(turn, turn_score=0.3)
    speak(h, 1.0, speech=False)  # past the timeout; the final is still out
    for job_id in _jobs(h, WHISPER_WORKER):
        h.resolve(job_id)
    (eot,) = [m for m in h.sent if m["type"] == "end_of_turn"]
    assert eot["reason"] == "timeout" and eot["probability"] == 0.3
    h.check_order()


def test_a_turn_cut_by_finalize_still_times_out() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False, events=True, end_of_turn=True, end_of_turn_timeout_ms=1000))
    speak(h, 1.0)
    h.text({"type": "finalize"})
    speak(h, 0.9, speech=False)
    h.drain()
    assert "end_of_turn" not in [m["type"] for m in h.sent]
    speak(h, 0.2, speech=False)  # 1 s after the speech end
    h.drain()
    (eot,) = [m for m in h.sent if m["type"] == "end_of_turn"]
    assert eot["reason"] == "timeout"
    h.check_order()


@pytest.mark.parametrize("score_first", [True, False])
def test_a_final_that_trails_off_does_not_end_the_turn(score_first: bool) -> None:
    """Whisper's "depending on..." is unfinished speech: a high turn score does not end the turn
    (whichever comes back first, the score or the final); the timeout still does."""
    h = _turn_harness(timeout_ms=1000)
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    (turn,) = _jobs(h, TURN_WORKER)
    (final,) = [i for i, j in h.jobs.items() if j.worker == WHISPER_WORKER]

    def answer_final() -> None:
        h.jobs.pop(final)
        h.apply(h.core.on_result(final, transcript("depending on..."), h.now))

    if score_first:
        h.resolve(turn, turn_score=0.99)
        assert h.sent == []
        answer_final()
    else:
        answer_final()
        assert h.sent == []  # the final waits for its turn score
        h.resolve(turn, turn_score=0.99)
    assert [m["type"] for m in h.sent] == ["transcription"]
    speak(h, 1.0, speech=False)
    assert h.sent[-1]["type"] == "end_of_turn" and h.sent[-1]["reason"] == "timeout"
    h.check_order()


def test_a_failed_turn_score_leaves_the_timeout_to_end_the_turn() -> None:
    h = _turn_harness(timeout_ms=800)
    speak(h, 1.0)
    speak(h, 0.4, speech=False)
    h.resolve(_jobs(h, TURN_WORKER)[0], fail=True)
    h.drain()
    speak(h, 0.6, speech=False)
    assert [m["type"] for m in h.sent] == ["transcription", "end_of_turn"]
    assert h.sent[-1]["reason"] == "timeout" and h.sent[-1]["probability"] is None


def test_without_end_of_turn_no_turn_job_and_no_message() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 4.0, speech=False)
    h.drain()
    assert not any(j.worker == TURN_WORKER for j in h.jobs.values())
    assert [m["type"] for m in h.sent] == ["transcription"]


def _utterance_final(h: Harness) -> Submit:
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    (final,) = [j for j in h.jobs.values() if j.worker != VAD_WORKER]
    return final


def test_finals_use_the_deployments_beam_unless_the_session_names_one() -> None:
    def final_beam(limits: CoreLimits, **whisper: object) -> int:
        h = Harness(core=CodecSession.baseten(limits, ["en"]))
        h.text(v1_metadata(partials=False, **whisper))
        return _utterance_final(h).payload.options.beam_size

    assert final_beam(CoreLimits(whisper_beam_width=5)) == 5
    assert final_beam(CoreLimits(whisper_beam_width=5), beam_width=1) == 1
    assert final_beam(CoreLimits(whisper_beam_width=1), beam_width=3) == 3
    assert final_beam(CoreLimits()) == 1  # the core's own default: greedy


def test_postroll_final_is_its_speculation_with_the_trailing_audio() -> None:
    """With postroll_ms the final's audio holds that much after the speech, and the speculative
    final started in the pause already held it: one Whisper job per utterance, not two."""
    h = Harness(core=CodecSession.baseten(CoreLimits(postroll_ms=150), ["en"]))
    whisper_submits: list[Submit] = []
    apply = h.apply

    def recording(commands: list[Command]) -> None:
        whisper_submits.extend(
            c for c in commands if isinstance(c, Submit) and c.worker != VAD_WORKER
        )
        apply(commands)

    h.apply = recording
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    (final,) = whisper_submits
    assert final.payload.kind is JobKind.FINAL
    speech_samples = int(1.0 * 16000 / WINDOW_SAMPLES) * WINDOW_SAMPLES
    assert len(final.payload.audio) == speech_samples + int(0.150 * 16000)


def test_finals_carry_previous_finals_only_when_asked_and_reset_after_a_hot_fallback() -> None:
    plain = Harness()
    plain.text(v1_metadata(partials=False))
    first = _utterance_final(plain)
    plain.drain()
    assert first.payload.options.context == _utterance_final(plain).payload.options.context == ""

    h = Harness()
    h.text(v1_metadata(partials=False, condition_on_previous_text=True))
    assert _utterance_final(h).payload.options.context == ""  # nothing before the first
    h.drain()
    second = _utterance_final(h)
    assert second.payload.options.context == "final words"
    hot = Transcript([Segment("loop loop", 0.0, 1.0, -0.1, 0.01)], "en", None, temperature=0.8)
    h.jobs.pop(second.job_id)
    h.apply(h.core.on_result(second.job_id, hot, h.now))
    assert h.sent[-1]["transcript"] == "loop loop"  # sent as decoded, but not carried on
    assert _utterance_final(h).payload.options.context == ""
    h.drain()
    assert _utterance_final(h).payload.options.context == "final words"


def test_cancelled_job_is_heard_as_a_failure_not_awaited() -> None:
    h = Harness()
    h.text(v1_metadata(partials=False))
    speak(h, 1.0)
    speak(h, 0.6, speech=False)
    (final_id,) = [i for i, j in h.jobs.items() if j.worker != VAD_WORKER]
    h.jobs.pop(final_id)
    h.apply(h.core.on_result(final_id, JobCancelled(), h.now))  # its worker dropped it
    h.text({"type": "end_audio"})
    h.drain()
    assert h.core.done and h.sent[-1]["body"]["status"] == "finished"


def test_audio_backlog_beyond_the_bound_is_a_1013() -> None:
    h = Harness()
    h.text(v1_metadata())
    for _ in range(int(21 * 16000 / 4096)):  # the VAD never answers
        h.audio(4096)
    assert h.closes[0].code == 1013 and h.closes[0].error.error_type == "overloaded"
    assert h.core.done and not h.jobs


def test_oversized_audio_frame_is_a_typed_1009() -> None:
    h = Harness()
    h.text(v1_metadata())
    h.apply(h.core.on_bytes(b"\x00" * (MAX_AUDIO_FRAME_BYTES + 2), h.now))
    assert h.closes[0].code == 1009 and h.closes[0].error.error_type == "frame_too_large"
    assert h.core.done and not h.jobs


def test_load_json_only_raises_value_error() -> None:
    for bad in ("[" * 10_000, "1" * 5000, '{"a": ' + "9" * 4400 + "}", "\ud800", "{]"):
        try:
            load_json(bad)
        except ValueError:
            pass
    assert load_json('{"a": [1, {"b": "[[[["}]}') == {"a": [1, {"b": "[[[["}]}


# -- properties over arbitrary interleavings ----------------------------------------------------
# Weighted: mostly audio and results (so utterances, partials and finals happen), with rarer
# control frames, failures, bad frames, timers and disconnects.
ACTIONS = st.sampled_from(["audio"] * 8 + ["resolve"] * 8 + ["fail", "health", "tick"])


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    partials=st.sampled_from([True, True, False]),
    metadata=st.sampled_from(["v1"] * 6 + ["v1+turns"] * 2 + ["garbage", "none"]),
    actions=st.lists(ACTIONS, min_size=10, max_size=300),
    # Where one bad control frame, the end_audio and the disconnect come, if at all.
    bogus_at=st.none() | st.integers(0, 300),
    end_at=st.none() | st.integers(0, 150),
    disconnect_at=st.none() | st.integers(0, 80),
    data=st.data(),
)
def test_every_interleaving_ends_releases_and_keeps_order(
    partials, metadata, actions, bogus_at, end_at, disconnect_at, data
):
    h = Harness()
    if metadata == "v1":
        h.text(v1_metadata(partials=partials))
    elif metadata == "v1+turns":
        h.text(v1_metadata(partials=partials, end_of_turn=True, end_of_turn_timeout_ms=500))
    elif metadata == "garbage":
        h.text("{not json")
    for step, action in enumerate(actions):
        if h.core.done:
            break
        if step == bogus_at:
            h.text(data.draw(st.sampled_from(['{"type": "bogus"}', "[", "x" * 10, "{}"])))
        if step == end_at:
            h.text({"type": "end_audio"})
        if step == disconnect_at:
            h.disconnect()
        if h.core.done:
            break
        if action == "audio":
            h.audio(data.draw(st.sampled_from([WINDOW_SAMPLES, 7] + [4096] * 4 + [16000] * 2)))
            # The VAD answers each window as the data says (speech runs, pauses).
        elif action == "resolve" and h.jobs:
            job_id = data.draw(st.sampled_from(sorted(h.jobs)))
            # Runs of speech and of silence (utterances, pauses), sometimes choppy.
            pattern = data.draw(st.sampled_from([[True]] * 4 + [[False]] * 4 + [[True, False]]))
            h.resolve(job_id, pattern, turn_score=data.draw(st.sampled_from([0.1, 0.9])))
        elif action == "fail" and h.jobs:
            whisper_jobs = sorted(i for i, j in h.jobs.items() if j.worker != VAD_WORKER)
            if whisper_jobs:  # (a failed VAD job ends the session: a unit case covers it)
                h.resolve(data.draw(st.sampled_from(whisper_jobs)), fail=True)
        elif action == "health":
            h.text({"type": "health_check"})
        elif action == "tick":
            h.tick(data.draw(st.sampled_from([0.1, 1.0, FIRST_FRAME_TIMEOUT_S])))
        h.check_order()
    # However it got here, the session ends: the client says end_audio or leaves, or times out.
    if not h.core.done:
        h.text({"type": "end_audio"})
        h.drain()
        h.tick(FIRST_FRAME_TIMEOUT_S + 1)
    if not h.core.done:
        h.disconnect()
    assert h.core.done
    assert not h.jobs and h.core.outstanding_jobs == frozenset()
    h.check_order()
    kinds = {m.get("type") for m in h.sent}
    event(f"finals sent: {any(m.get('is_final') for m in h.sent)}")
    event(f"partials sent: {any(m.get('is_final') is False for m in h.sent)}")
    event(
        f"ended by: {h.closes[0].code if h.closes else 'disconnect'}; error frame: {'error' in kinds}"
    )
    # Inputs after the end change nothing.
    h.apply(h.core.on_bytes(b"\x00" * 1024, h.now))
    h.apply(h.core.on_text('{"type": "end_audio"}', h.now))
    h.apply(h.core.on_disconnect(h.now))


# -- stable partials, end of turn and finalize over arbitrary interleavings ----------------------
# (A reviewer's property: every final begins with its utterance's promised words, the stable count
# never goes down, end_of_turn follows the turn's last final with words, and nothing leaks.)
PROMISE_PARTIALS = ["a b", "a b c", "a b c d", "a x", "a b c d e"]
FINAL_TAILS = ["end.", "and...", "so,", ""]


def words(text):
    return [normalise(w) for w in text.split()]


class PromiseHarness(Harness):
    """Finals that keep their prefix (as the engine does) and trail off or come back empty;
    end_of_turn follows the last final with words."""

    def resolve_with(self, job_id, data, fail=False):
        command = self.jobs.pop(job_id)
        if fail:
            result = RuntimeError("failed")
        elif command.worker == TURN_WORKER:
            result = data.draw(st.sampled_from([0.1, 0.9]))
        elif command.worker == VAD_WORKER:
            pattern = data.draw(st.sampled_from([[True]] * 4 + [[False]] * 4 + [[True, False]]))
            windows = command.payload[1]
            probs = [SPEECH if pattern[i % len(pattern)] else SILENCE for i in range(len(windows))]
            result = VadResult(np.array(probs), command.payload[0])
        else:
            job = command.payload
            if job.kind is JobKind.FINAL:
                text = f"{job.options.prefix} {data.draw(st.sampled_from(FINAL_TAILS))}".strip()
            else:
                text = data.draw(st.sampled_from(PROMISE_PARTIALS))
            result = (
                Transcript([Segment(text, 0.0, 1.0, -0.1, 0.01)], "en", None)
                if text
                else Transcript([], "en", None)
            )
        self.apply(self.core.on_result(job_id, result, self.now))

    def check_order(self):
        last_final, last_with_words, finals_seen, words_since = -1, -1, set(), False
        for m in self.sent:
            t = m.get("type")
            if t == "end_of_turn":
                assert m["transcription_num"] == last_with_words, "end_of_turn before its final"
                assert words_since, "end_of_turn twice"
                words_since = False
            elif t == "transcription":
                n = m["transcription_num"]
                if m["is_final"]:
                    assert n > last_final, "finals out of order"
                    last_final = n
                    finals_seen.add(n)
                    if m["transcript"]:
                        last_with_words, words_since = n, True
                else:
                    assert n not in finals_seen, "partial after its final"
        assert len(self.closes) <= 1

    def check_promises(self):
        stable = {}
        counts = {}
        for m in self.sent:
            if m.get("type") != "transcription":
                continue
            n = m["transcription_num"]
            if not m["is_final"]:
                assert m["stable_word_count"] >= counts.get(n, 0), "stable count went down"
                counts[n] = m["stable_word_count"]
                stable[n] = m["stable_text"]
            else:
                promised = words(stable.get(n, ""))
                assert words(m["transcript"])[: len(promised)] == promised, (
                    n,
                    stable.get(n),
                    m["transcript"],
                )


PROMISE_ACTIONS = st.sampled_from(["audio"] * 8 + ["resolve"] * 8 + ["fail", "tick", "finalize"])


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    actions=st.lists(PROMISE_ACTIONS, min_size=10, max_size=300),
    end_at=st.none() | st.integers(0, 200),
    data=st.data(),
)
def test_interleavings_with_promises_turns_finalize(actions, end_at, data):
    h = PromiseHarness()
    h.text(
        v1_metadata(
            partials=True,
            stable_partials=True,
            events=True,
            end_of_turn=True,
            end_of_turn_timeout_ms=500,
        )
    )
    for step, action in enumerate(actions):
        if h.core.done:
            break
        if step == end_at:
            h.text({"type": "end_audio"})
        if action == "audio":
            h.audio(data.draw(st.sampled_from([WINDOW_SAMPLES] + [4096] * 4 + [16000] * 2)))
        elif action == "resolve" and h.jobs:
            h.resolve_with(data.draw(st.sampled_from(sorted(h.jobs))), data)
        elif action == "fail" and h.jobs:
            others = sorted(i for i, j in h.jobs.items() if j.worker != VAD_WORKER)
            if others:
                h.resolve_with(data.draw(st.sampled_from(others)), data, fail=True)
        elif action == "tick":
            h.tick(0.1)
        elif action == "finalize":
            h.text({"type": "finalize"})
        h.check_order()
        h.check_promises()
    if not h.core.done:
        h.text({"type": "end_audio"})
        for _ in range(10_000):
            if not h.jobs:
                break
            h.resolve_with(min(h.jobs), data)
    assert h.core.done, "the flush never finished"
    assert not h.jobs and h.core.outstanding_jobs == frozenset()
    h.check_order()
    h.check_promises()
    types = [m.get("type") for m in h.sent]
    event(f"eot: {'end_of_turn' in types}")
    event(f"stable>0: {any(m.get('stable_word_count') for m in h.sent)}")
    event(f"finalized: {'finalize' in types}")
