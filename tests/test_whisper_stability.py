"""Stable partials: the pure LocalAgreement rule (whisper_streaming.stability), the core marking
partials only when the session opted in, and Baseten's partial frame with and without it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.clients.stt import v1_metadata
from speech_common.driver import Cancel, Send, Submit
from speech_common.vad import WINDOW_SAMPLES, VadResult
from whisper_streaming.codec_session import CodecSession
from whisper_streaming.engine import JobKind, Segment, Transcript
from whisper_streaming.events import Transcription
from whisper_streaming.protocol import VAD_WORKER, WHISPER_WORKER, CoreLimits
from whisper_streaming.stability import LocalAgreement, normalise

SPEECH, SILENCE = 0.95, 0.01


# -- the rule -------------------------------------------------------------------------------------
def feed(rule: LocalAgreement, *texts: str) -> list[tuple[str, ...]]:
    return [rule.update(text) for text in texts]


def test_a_word_is_stable_once_two_hypotheses_agree_on_the_prefix_up_to_it() -> None:
    rule = LocalAgreement(agreement=2, hold_back=0)
    assert feed(rule, "the cat", "the cat sat", "the cat sat on") == [
        (),
        ("the", "cat"),
        ("the", "cat", "sat"),
    ]


def test_agreement_n_needs_n_hypotheses_and_stops_at_the_first_disagreement() -> None:
    rule = LocalAgreement(agreement=3, hold_back=0)
    assert feed(rule, "a b c", "a b d", "a x c d") == [(), (), ("a",)]
    assert feed(rule, "a x c e") == [("a",)]  # the oldest of the three still says "b"
    assert feed(rule, "a x c f") == [("a", "x", "c")]


def test_the_newest_hypothesis_last_words_are_held_back() -> None:
    rule = LocalAgreement(agreement=2, hold_back=1)
    assert feed(rule, "and so my fell", "and so my fell") == [(), ("and", "so", "my")]
    assert rule.update("and so my fellow Americans") == ("and", "so", "my")  # "fell" never marked
    assert rule.update("and so my fellow Americans ask") == ("and", "so", "my", "fellow",
                                                               "Americans")  # fmt: skip


def test_case_and_punctuation_do_not_count_and_the_newest_spelling_is_sent() -> None:
    assert normalise("Hello,") == normalise("hello") == "hello"
    assert normalise("don't") == "dont" and normalise("—") == ""
    rule = LocalAgreement(agreement=2, hold_back=0)
    assert feed(rule, "Hello world.", "hello, World and") == [(), ("hello,", "World")]
    assert rule.update("Hello. World, and more") == ("Hello.", "World,", "and")


def test_the_stable_prefix_never_shrinks_and_a_disagreement_keeps_the_promise() -> None:
    rule = LocalAgreement(agreement=2, hold_back=0)
    assert feed(rule, "I scream", "I scream for") == [(), ("I", "scream")]
    # Whisper changes its mind: the promise stands (that is the churn the benchmark measures).
    assert rule.update("Ice cream") == ("I", "scream")
    assert rule.update("") == ("I", "scream")
    # Hypotheses that contradict the promise extend nothing, however well they agree.
    assert rule.update("Ice cream for all") == ("I", "scream")
    assert rule.update("Ice cream for all of") == ("I", "scream")
    # Back in agreement with it: the prefix grows again.
    assert rule.update("I scream for all of us") == ("I", "scream")  # "Ice cream" was last
    assert rule.update("I scream, for all of us.") == ("I", "scream,", "for", "all", "of", "us.")


def test_an_inserted_word_does_not_shift_new_words_into_the_promise() -> None:
    rule = LocalAgreement(agreement=2, hold_back=1)
    assert feed(rule, "Mister John had", "Mister John had then") == [(), ("Mister", "John",
                                                                          "had")]  # fmt: skip
    # "And" comes in front: position by position these agree with each other, not the promise.
    assert feed(rule, "And Mister John had then", "And Mister John had then leisure to") == [
        ("Mister", "John", "had"),
        ("Mister", "John", "had"),
    ]


def test_an_unsure_hypothesis_agrees_to_nothing() -> None:
    rule = LocalAgreement(agreement=2, hold_back=0, min_log_prob=-0.35)
    assert feed(rule, "maybe consider it", "maybe consider it as") == [(), ("maybe", "consider",
                                                                          "it")]  # fmt: skip
    rule.reset()
    assert rule.update("maybe consider it", -0.3) == ()
    assert rule.update("maybe consider it as", -0.39) == ()  # unsure: no agreement with it
    assert rule.update("maybe consider it as the", -0.2) == ()  # the unsure one is still in the two
    assert rule.update("maybe consider it as the art", -0.2) == ("maybe", "consider", "it", "as",
                                                                 "the")  # fmt: skip
    # A log-prob the decode did not give counts as sure; no floor: every hypothesis is.
    assert LocalAgreement(2, 0, -0.35).update("a b") == ()
    assert feed(LocalAgreement(2, 0, None), "a b", "a b c") == [(), ("a", "b")]


def test_reset_starts_a_new_utterance() -> None:
    rule = LocalAgreement(agreement=2, hold_back=0)
    feed(rule, "one two", "one two")
    assert rule.words == ("one", "two")
    rule.reset()
    assert rule.words == () and rule.update("one two") == ()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        LocalAgreement(agreement=0)
    with pytest.raises(ValueError):
        LocalAgreement(hold_back=-1)


WORDS = st.sampled_from(["a", "A,", "b", "b.", "c", "cc", "d"])


HYPOTHESIS = st.tuples(
    st.lists(WORDS, max_size=8).map(" ".join), st.sampled_from([None, -0.1, -1.0])
)


@given(st.lists(HYPOTHESIS, max_size=12), st.integers(1, 3), st.integers(0, 2))
def test_properties(
    hypotheses: list[tuple[str, float | None]], agreement: int, hold_back: int
) -> None:
    """Never shrinks; promised words only change spelling; a stable word was in every one of
    the last ``agreement`` hypotheses at its place when it was first marked, and so was every
    promised word before it; none of those hypotheses was unsure."""
    rule = LocalAgreement(agreement, hold_back, min_log_prob=-0.5)
    texts = [text for text, _ in hypotheses]
    before: tuple[str, ...] = ()
    for i, (text, log_prob) in enumerate(hypotheses):
        stable = rule.update(text, log_prob)
        assert len(stable) >= len(before)
        assert [normalise(w) for w in stable[: len(before)]] == [normalise(w) for w in before]
        recent = [
            [normalise(w) for w in t.split()] for t in texts[max(0, i - agreement + 1) : i + 1]
        ]
        for k in range(len(before), len(stable)):
            assert i + 1 >= agreement
            assert all(lp != -1.0 for _, lp in hypotheses[i - agreement + 1 : i + 1])
            for j in range(k + 1):
                assert all(len(h) > j and h[j] == normalise(stable[j]) for h in recent)
            assert k < len(text.split()) - hold_back
        before = stable


# -- the core and Baseten's frame ------------------------------------------------------------------
class Session:
    """A Baseten session whose Whisper partials say what the test scripts."""

    def __init__(
        self, log_prob: float = -0.2, limits: CoreLimits | None = None, **streaming: object
    ) -> None:
        limits = limits or CoreLimits(speculative_finals=False)
        self.session = CodecSession.baseten(limits, ["en"])
        self.log_prob = log_prob  # every partial's decode
        self.now = 0.0
        self.jobs: dict[int, Submit] = {}
        self.sent: list[dict] = []
        self.events: list[Transcription] = []
        self.finals_asked: list[str] = []  # each final job's promised words, in order
        self.apply(self.session.start(self.now))
        meta = v1_metadata()
        meta["streaming_whisper_params"].update(streaming)
        self.apply(self.session.on_text(json.dumps(meta), self.now))

    def apply(self, commands: list) -> None:
        for command in commands:
            if isinstance(command, Send):
                self.sent.append(command.message)
            elif isinstance(command, Submit):
                self.jobs[command.job_id] = command
                if command.worker == WHISPER_WORKER and command.payload.kind is JobKind.FINAL:
                    self.finals_asked.append(command.payload.options.prefix)
            elif isinstance(command, Cancel):
                self.jobs.pop(command.job_id, None)

    def speak(self, seconds: float, speech: bool = True) -> None:
        for _ in range(round(seconds * 16000 / WINDOW_SAMPLES)):
            self.now += WINDOW_SAMPLES / 16000
            self.apply(self.session.on_bytes(b"\x01\x00" * WINDOW_SAMPLES, self.now))
            for job_id, job in sorted(self.jobs.items()):
                if job.worker == VAD_WORKER:
                    del self.jobs[job_id]
                    probs = np.full(len(job.payload[1]), SPEECH if speech else SILENCE)
                    result = VadResult(probs, job.payload[0])
                    self.apply(self.session.on_result(job_id, result, self.now))

    def whisper(self, texts: Iterator[str]) -> None:
        """Answer every Whisper job: partials with the next scripted text, finals "final"."""
        for job_id, job in sorted(self.jobs.items()):
            if job.worker != WHISPER_WORKER:
                continue
            del self.jobs[job_id]
            partial = job.payload.kind is JobKind.PARTIAL
            text = next(texts) if partial else "the final words"
            log_prob = self.log_prob if partial else -0.2
            seg = Segment(text, job.payload.offset_s, job.payload.offset_s + 1, log_prob, 0.01)
            self.apply(self.session.on_result(job_id, Transcript([seg], "en", 0.99), self.now))

    def partials(self) -> list[dict]:
        return [m for m in self.sent if m["type"] == "transcription" and not m["is_final"]]


def run_utterances(session: Session, *utterances: list[str]) -> None:
    """Each utterance: speech until every scripted partial went out, then a pause (its final)."""
    for texts in utterances:
        before = len(session.partials())
        scripted = iter(texts)
        while len(session.partials()) < before + len(texts):
            session.speak(0.1)
            session.whisper(scripted)
        session.speak(0.7, speech=False)
        session.whisper(iter(()))


UTTERANCE = ["Hello", "Hello world,", "Hello world, how", "hello world how are you"]


def test_partials_carry_their_stable_prefix_only_when_the_session_opts_in() -> None:
    on = Session(stable_partials=True)
    run_utterances(on, UTTERANCE, ["Second", "Second one"])
    partials = on.partials()
    assert [p["transcript"] for p in partials] == UTTERANCE + ["Second", "Second one"]
    assert [(p["stable_word_count"], p["stable_text"]) for p in partials] == [
        (0, ""),  # one hypothesis agrees with nothing
        (1, "Hello"),
        (2, "Hello world,"),  # "how" is the newest hypothesis's last word: held back
        (3, "hello world how"),  # spelled as the newest hypothesis spells them
        (0, ""),  # a new utterance starts from nothing
        (1, "Second"),
    ]
    assert [p["transcription_num"] for p in partials] == [0, 0, 0, 0, 1, 1]
    finals = [m for m in on.sent if m["type"] == "transcription" and m["is_final"]]
    assert len(finals) == 2 and not any("stable_text" in f for f in finals)
    assert not on.session.core._stability  # dropped at each final

    off = Session()
    run_utterances(off, UTTERANCE, ["Second", "Second one"])
    assert [p["transcript"] for p in off.partials()] == [p["transcript"] for p in partials]
    for with_it, without in zip(partials, off.partials(), strict=True):
        assert "stable_text" not in without and "stable_word_count" not in without
        extra = {k: with_it.pop(k) for k in ("stable_text", "stable_word_count")}
        assert with_it == without and set(extra) == {"stable_text", "stable_word_count"}


def test_a_final_is_asked_to_keep_the_words_its_partials_promised() -> None:
    on = Session(stable_partials=True)
    run_utterances(on, UTTERANCE, ["Second"])
    assert on.finals_asked == ["hello world how", ""]  # one partial promises nothing
    off = Session()
    run_utterances(off, UTTERANCE)
    assert off.finals_asked == [""]


def test_a_partial_back_during_the_speculative_final_promises_nothing_more() -> None:
    """The speculative final was asked to keep the words promised when the pause began; a
    partial that comes back in the pause keeps the promise as it was, so the speculative final
    is the final (no second decode)."""
    s = Session(limits=CoreLimits(), stable_partials=True)  # speculative finals on
    scripted = iter(["Hello", "Hello world,"])
    while len(s.partials()) < 2:
        s.speak(0.1)
        s.whisper(scripted)
    assert s.partials()[-1]["stable_text"] == "Hello"
    s.speak(0.6)  # a partial is asked for and not answered yet
    (late,) = [j for j, job in s.jobs.items() if job.payload.kind is JobKind.PARTIAL]
    s.speak(0.2, speech=False)  # the pause is long enough to speculate
    assert s.finals_asked == ["Hello"]
    seg = Segment("Hello world, how are", 0.0, 1.0, -0.2, 0.01)
    s.apply(s.session.on_result(late, Transcript([seg], "en", 0.99), s.now))
    del s.jobs[late]
    assert s.partials()[-1]["transcript"] == "Hello world, how are"
    assert s.partials()[-1]["stable_text"] == "Hello"  # would be "Hello world," outside a pause
    s.speak(0.5, speech=False)  # the pause lasted: the speculative final is the final
    assert s.finals_asked == ["Hello"]
    s.whisper(iter(()))
    assert [m["transcript"] for m in s.sent if m.get("is_final")] == ["the final words"]


def test_the_core_gives_the_rule_each_partials_log_prob() -> None:
    unsure = Session(log_prob=-0.8, stable_partials=True)
    run_utterances(unsure, UTTERANCE)
    assert [p["stable_word_count"] for p in unsure.partials()] == [0, 0, 0, 0]


def test_without_the_option_the_partial_frame_is_the_published_one_byte_for_byte() -> None:
    off = Session()
    run_utterances(off, ["Hello there"])
    assert json.dumps(off.partials()[0]) == json.dumps({
        "type": "transcription",
        "is_final": False,
        "transcript": "Hello there",
        "transcription_num": 0,
        "language_code": "en",
        "language_prob": 0.99,
        "audio_length_sec": off.partials()[0]["audio_length_sec"],
        "segments": [{"text": "Hello there", "start_time": 0.0, "end_time": 1.0,
                      "log_prob": -0.2}],
    })  # fmt: skip
    on = Session(stable_partials=True)
    run_utterances(on, ["Hello there"])
    frame = on.partials()[0]
    assert list(frame)[-2:] == ["stable_text", "stable_word_count"]  # appended after the rest


def test_the_option_is_a_streaming_param_in_every_metadata_shape() -> None:
    from whisper_streaming.schema import parse_metadata

    assert not parse_metadata({}).streaming.stable_partials
    assert parse_metadata(
        {"streaming_whisper_params": {"stable_partials": True}}
    ).streaming.stable_partials
    v2 = {"streaming_params": {"enable_partial_transcripts": True, "stable_partials": True}}
    assert parse_metadata(v2).streaming.stable_partials
    with pytest.raises(ValueError):
        parse_metadata({"whisper_params": {"stable_partials": True}})
