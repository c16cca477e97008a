"""Deepgram Flux's turn-based protocol (``whisper_streaming.dialects.flux``) without sockets: the
query, Connected, TurnInfo's events through a turn (StartOfTurn, Update, EagerEndOfTurn,
TurnResumed, EndOfTurn with its trigger), ForceEndTurn, CloseStream, Configure and errors. The
harness is the Deepgram dialect's: jobs resolved by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speech_common.vad import WINDOW_SAMPLES, VadResult
from speech_common.ws import CloseCode, ProtocolError
from tests.test_whisper_dialects import SILENCE, SPEECH, WINDOW_S, Harness, items
from whisper_streaming.dialects import DeepgramCodec, FluxCodec, choose_codec
from whisper_streaming.dialects.flux import parse_flux_query
from whisper_streaming.engine import JobKind, Segment, Transcript, Word
from whisper_streaming.events import TurnEndLikely, TurnEndVoided
from whisper_streaming.protocol import TURN_WORKER, VAD_WORKER, CoreLimits, SttCore

# LiveKit's deepgram.STTv2 (livekit-plugins-deepgram 1.8.9) and pipecat's
# DeepgramFluxSTTService (pipecat-ai 1.14.0) defaults, as their URLs are built.
LIVEKIT_QUERY = "model=flux-general-en&sample_rate=16000&encoding=linear16&mip_opt_out=false"
PIPECAT_QUERY = "model=flux-general-en&sample_rate=16000&encoding=linear16"
BASE = "model=flux-general-en&encoding=linear16&sample_rate=16000"


class Flux(Harness):
    def turn_infos(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == "TurnInfo"]

    def events(self) -> list[str]:
        return [m["event"] for m in self.turn_infos()]

    def score(self, probability: float) -> None:
        for job_id in sorted(i for i, j in self.jobs.items() if j.worker == TURN_WORKER):
            self.jobs.pop(job_id)
            self.apply(self.session.on_result(job_id, probability, self.now))

    def utterance(self, probability: float, pause_s: float = 0.7) -> None:
        self.speak(1.0)
        self.whisper()  # partials
        self.speak(pause_s, speech=False)
        self.score(probability)
        self.whisper()  # the final


def test_the_query_chooses_flux_before_deepgram() -> None:
    core = SttCore(CoreLimits(), ["en"])
    for query in (LIVEKIT_QUERY, PIPECAT_QUERY, "_p=/v2/listen", "model=flux-general-multi"):
        assert isinstance(choose_codec(core, items(query)), FluxCodec), query
    # A base URL ending in ?_p= swallows Flux's first parameter: it is opened up again.
    assert isinstance(choose_codec(core, items(f"_p=?{PIPECAT_QUERY}")), FluxCodec)
    assert isinstance(choose_codec(core, items(f"_p=/v2/listen?{PIPECAT_QUERY}")), FluxCodec)
    assert isinstance(choose_codec(core, items("model=nova-3&encoding=linear16")), DeepgramCodec)
    assert isinstance(choose_codec(core, items("_p=/v1/listen")), DeepgramCodec)


def test_flux_defaults_and_the_clients_queries() -> None:
    o = parse_flux_query(items(LIVEKIT_QUERY))
    assert (o.encoding, o.sample_rate, o.language) == ("linear16", 16000, "en")
    assert (o.eot_threshold, o.eager_eot_threshold, o.eot_timeout_ms) == (0.7, None, 5000)
    assert o.ignored == ["mip_opt_out"]
    o = parse_flux_query(items("model=flux-general-en&eager_eot_threshold=0.5&eot_threshold=0.8"
                               "&eot_timeout_ms=3000&keyterm=Baseten&keyterm=Orpheus"))  # fmt: skip
    assert (o.eot_threshold, o.eager_eot_threshold, o.eot_timeout_ms) == (0.8, 0.5, 3000)
    assert o.keyterms == ["Baseten", "Orpheus"]
    assert parse_flux_query(items("model=flux-general-multi")).language == "auto"


def test_connected_comes_first_and_every_message_counts_in_sequence_id() -> None:
    h = Flux(BASE)
    assert h.sent == [{"type": "Connected", "request_id": "req-1", "sequence_id": 0}]
    h.utterance(0.9)
    assert [m["sequence_id"] for m in h.sent] == list(range(len(h.sent)))
    assert all(m["request_id"] == "req-1" for m in h.sent)


def test_a_turn_starts_as_soon_as_there_is_speech_its_words_follow_the_model_ends_it() -> None:
    h = Flux(BASE)
    h.utterance(0.9)
    infos = h.turn_infos()
    assert infos[0]["event"] == "StartOfTurn" and infos[0]["transcript"] == ""
    assert infos[1]["event"] == "Update" and infos[1]["transcript"] == "Um, hello world."
    end = infos[-1]
    assert end["event"] == "EndOfTurn" and end["trigger"] == "model"
    assert end["transcript"] == "Um, hello world." and end["end_of_turn_confidence"] == 0.9
    assert [w["word"] for w in end["words"]] == ["Um,", "hello", "world."]
    assert all({"word", "confidence", "start", "end"} <= set(w) for w in end["words"])
    assert end["turn_index"] == 0 and end["audio_window_start"] <= end["audio_window_end"]
    h.utterance(0.9)  # the next turn
    assert h.turn_infos()[-1]["event"] == "EndOfTurn" and h.turn_infos()[-1]["turn_index"] == 1
    assert h.events().count("StartOfTurn") == 2


def test_a_pause_under_eot_threshold_keeps_the_turn_open_and_its_words_add_up() -> None:
    h = Flux(BASE)
    h.utterance(0.6)  # under Flux's default 0.7
    assert "EndOfTurn" not in h.events() and "EagerEndOfTurn" not in h.events()
    h.utterance(0.9)
    events = h.events()
    assert events.count("StartOfTurn") == 1 and events[-1] == "EndOfTurn"
    end = h.turn_infos()[-1]
    assert end["transcript"] == "Um, hello world. Um, hello world."
    assert {m["turn_index"] for m in h.turn_infos()} == {0}


def test_eager_end_of_turn_then_turn_resumed_when_the_speaker_goes_on() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5")
    h.utterance(0.6)  # over eager, under eot: a reply may be prepared
    eager = h.turn_infos()[-1]
    assert eager["event"] == "EagerEndOfTurn" and eager["end_of_turn_confidence"] == 0.6
    h.speak(0.3)  # the speaker goes on: TurnResumed at the onset
    assert h.events()[-1] == "TurnResumed"
    h.whisper()
    h.speak(0.7, speech=False)
    h.score(0.9)
    h.whisper()
    assert h.events()[-1] == "EndOfTurn" and h.events().count("TurnResumed") == 1


def _early_in_the_pause(h: Flux, probability: float) -> None:
    """An utterance, then 0.2 s of silence: the speculative final and the turn score of the
    same audio are asked for (and answered) before the pause is long enough for the final."""
    h.speak(1.0)
    h.whisper()  # partials
    h.speak(0.2, speech=False)
    h.whisper()  # the speculative final
    h.score(probability)  # the early turn score


def test_the_eager_end_comes_early_in_the_pause_and_end_of_turn_repeats_it() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5")
    _early_in_the_pause(h, 0.9)
    assert h.events() == ["StartOfTurn", "Update", "EagerEndOfTurn"]  # before the final
    assert not any(m.get("is_final") for m in h.sent)
    eager = h.turn_infos()[-1]
    assert eager["transcript"] == "Um, hello world." and eager["end_of_turn_confidence"] == 0.9
    h.speak(0.5, speech=False)  # the pause lasts: the speculative final is the final
    assert h.events() == ["StartOfTurn", "Update", "EagerEndOfTurn", "EndOfTurn"]
    assert h.turn_infos()[-1]["transcript"] == eager["transcript"]
    check_flux_invariants(h)
    plain = Flux(BASE)  # no eager_eot_threshold: no eager end
    _early_in_the_pause(plain, 0.9)
    plain.speak(0.5, speech=False)
    assert plain.events() == ["StartOfTurn", "Update", "EndOfTurn"]


def test_speech_within_the_pause_after_an_early_eager_end_resumes_the_turn() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5")
    _early_in_the_pause(h, 0.6)
    assert h.events()[-1] == "EagerEndOfTurn"
    h.speak(0.3)  # the speaker goes on before the pause is long enough: the same utterance
    assert h.events()[-1] == "TurnResumed"
    assert h.turn_infos()[-1]["transcript"] == "Um, hello world."
    h.utterance(0.9)
    assert h.events()[-1] == "EndOfTurn" and h.events().count("TurnResumed") == 1
    check_flux_invariants(h)


def test_an_early_score_under_eager_sends_nothing_early() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5")
    _early_in_the_pause(h, 0.3)
    assert h.events() == ["StartOfTurn", "Update"]


def test_eager_end_then_silence_ends_the_turn_at_its_timeout_with_the_same_transcript() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5&eot_timeout_ms=1000")
    h.utterance(0.6)
    assert h.events()[-1] == "EagerEndOfTurn"
    h.speak(0.5, speech=False)
    end = h.turn_infos()[-1]
    assert end["event"] == "EndOfTurn" and end["trigger"] == "timeout"
    assert end["transcript"] == h.turn_infos()[-2]["transcript"]


def test_force_end_turn_ends_the_turn_after_its_final() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.text({"type": "ForceEndTurn"})
    h.whisper()
    end = h.turn_infos()[-1]
    assert end["event"] == "EndOfTurn" and end["trigger"] == "manual"
    assert end["transcript"] == "Um, hello world."
    h.text({"type": "ForceEndTurn"})  # no turn open: nothing to end
    h.whisper()
    assert h.events().count("EndOfTurn") == 1


def test_close_stream_sends_the_turns_last_words_without_an_end_of_turn_then_closes() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.whisper([])  # the partial heard nothing yet
    h.utterance(0.5)  # a turn still open
    h.speak(0.6)
    h.text({"type": "CloseStream"})
    for _ in range(5):
        h.vad(False)
        h.score(0.95)
        h.whisper()
    assert h.events()[-1] == "Update" and "EndOfTurn" not in h.events()
    assert h.turn_infos()[-1]["transcript"] == "Um, hello world. Um, hello world."
    assert [c.code for c in h.closes] == [CloseCode.NORMAL]


def test_configure_changes_the_thresholds_and_key_terms_from_now_on() -> None:
    h = Flux(BASE)
    h.text({"type": "Configure", "thresholds": {"eot_threshold": 0.9}, "keyterms": ["Baseten"]})
    answer = h.sent[-1]
    assert answer["type"] == "ConfigureSuccess" and answer["keyterms"] == ["Baseten"]
    assert answer["thresholds"] == {"eot_threshold": 0.9, "eager_eot_threshold": None,
                                    "eot_timeout_ms": 5000}  # fmt: skip
    assert h.core.events.turns.threshold == 0.9
    h.utterance(0.8)  # ended the turn at Flux's default 0.7; not at 0.9
    assert "EndOfTurn" not in h.events()
    assert all("Glossary: Baseten." in j.payload.options.prompt
               for j in h.submitted if hasattr(j.payload, "options"))  # fmt: skip
    h.text({"type": "Configure", "thresholds": {"eot_threshold": 2}})
    assert h.sent[-1]["type"] == "ConfigureFailure" and "eot_threshold" in h.sent[-1]["description"]
    assert not h.closes


@pytest.mark.parametrize(
    ("query", "code"),
    [
        (f"{BASE}&eot_threshold=0.2", "INVALID_QUERY_PARAMETER"),
        ("model=flux-general-en&encoding=opus", "INVALID_QUERY_PARAMETER"),
        (f"{BASE}&redact=numbers", "INVALID_QUERY_PARAMETER"),
    ],
)
def test_a_query_flux_would_refuse_is_an_error_then_1008(query: str, code: str) -> None:
    h = Flux(query)
    ((error,), (close,)) = ([m for m in h.sent], h.closes)
    assert error["type"] == "Error" and error["code"] == code and error["sequence_id"] == 0
    assert close.code == CloseCode.POLICY_VIOLATION


def test_an_unknown_message_is_an_error_then_1008() -> None:
    h = Flux(BASE)
    h.text({"type": "Finalize"})  # v1's, not Flux's
    assert h.sent[-1]["type"] == "Error" and h.sent[-1]["code"] == "UNPARSABLE_CLIENT_MESSAGE"
    assert h.closes[0].code == CloseCode.POLICY_VIOLATION


# -- edge cases (a reviewer's probes: each failed on the first version) ---------------------------
def answer(h: Harness, kind: JobKind, words: list[Word]) -> None:
    """Answer only the pending Whisper jobs of one kind (partial or final)."""
    for job_id, job in sorted(h.jobs.items()):
        if job.worker in (VAD_WORKER, TURN_WORKER) or job.payload.kind is not kind:
            continue
        h.jobs.pop(job_id)
        text = " ".join(w.word for w in words)
        seg = Segment(
            text,
            job.payload.offset_s,
            job.payload.offset_s + 1,
            -0.2,
            0.01,
            words if kind is JobKind.FINAL else [],
        )
        h.apply(h.session.on_result(job_id, Transcript([seg], "en", None), h.now))


A = [Word("Alpha", 0.1, 0.4, 0.9), Word("one.", 0.4, 0.8, 0.9)]
B = [Word("Bravo", 0.1, 0.4, 0.9), Word("two.", 0.4, 0.8, 0.9)]


def check_flux_invariants(h: Flux) -> None:
    """Flux's state machine (developers.deepgram.com/docs/flux/state)."""
    started, eager, index, last_eager = False, False, 0, None
    for m in h.turn_infos():
        assert m["turn_index"] == index, m
        if m["event"] == "StartOfTurn":
            assert not started, m
            assert m["transcript"] == "", m  # here: as soon as there is speech, before words
            started = True
        else:
            assert started, m
        if m["event"] == "TurnResumed":
            assert eager, m
            eager = False
        if m["event"] == "EagerEndOfTurn":
            eager, last_eager = True, m["transcript"]
        if m["event"] == "EndOfTurn":
            if eager:
                assert m["transcript"] == last_eager
            started, eager, index = False, False, index + 1


# Two turns merge into one when their EndOfTurn is due after CloseStream arrived.
def test_close_stream_does_not_swallow_an_earlier_turns_end_and_merge_turns() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=500")
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)  # StartOfTurn "Alpha one."
    h.speak(1.0, speech=False)  # pause: final A asked, scored low
    h.score(0.3)
    # 1 s of silence > eot_timeout_ms: turn 0 is over in the audio; final A still decoding
    h.speak(1.0)  # turn 1's speech
    h.text({"type": "CloseStream"})
    answer(h, JobKind.FINAL, A)  # final A (the timeout's EndOfTurn queued after it)
    for _ in range(5):
        h.vad(False)
        h.score(0.3)
        answer(h, JobKind.FINAL, B)  # the flush's final of turn 1
    check_flux_invariants(h)
    assert "EndOfTurn" in h.events(), h.events()  # turn 0 ended before CloseStream


# A second ForceEndTurn sent before the first one's final came back is lost.
def test_each_force_end_turn_ends_its_turn() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.text({"type": "ForceEndTurn"})  # final A decoding
    h.speak(1.0)  # the speaker goes on: turn 1
    h.text({"type": "ForceEndTurn"})
    h.whisper()
    h.whisper()
    ends = [m for m in h.turn_infos() if m["event"] == "EndOfTurn"]
    assert [(m["turn_index"], m["trigger"]) for m in ends] == [(0, "manual"), (1, "manual")], (
        h.events()
    )


# ForceEndTurn, then CloseStream before its final came back: no EndOfTurn.
def test_force_end_turn_then_close_stream_still_ends_the_turn() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.text({"type": "ForceEndTurn"})
    h.text({"type": "CloseStream"})
    for _ in range(3):
        h.vad(False)
        h.whisper()
    assert h.events()[-1] == "EndOfTurn", h.events()


# Connected's sequence_id is spent before core.configure can refuse the query.
def test_a_refused_language_hint_is_an_error_with_sequence_id_0() -> None:
    h = Flux("model=flux-general-multi&language_hint=fr")  # the harness serves en, de
    assert [m["type"] for m in h.sent] == ["Error"]
    assert h.sent[0]["sequence_id"] == 0, h.sent


# Partial of the next utterance before the previous final: the turn's transcript
# drops the words it already showed (and they reappear later).
def test_an_update_never_drops_words_of_a_final_still_decoding() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)  # StartOfTurn "Alpha one."
    h.speak(0.7, speech=False)
    h.score(0.3)  # turn stays open; final A still decoding
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, B)  # partial of B before final A
    transcripts = [m["transcript"] for m in h.turn_infos()[1:]]  # after the empty StartOfTurn
    assert all("Alpha" in t for t in transcripts), transcripts


# ForceEndTurn with speech going on: turn 0's Update carries turn 1's words.
def test_a_turns_updates_never_hold_the_next_turns_words() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.text({"type": "ForceEndTurn"})
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, B)  # partial of the continuation first
    answer(h, JobKind.FINAL, A)
    answer(h, JobKind.FINAL, B)
    turn0 = [m["transcript"] for m in h.turn_infos() if m["turn_index"] == 0]
    assert not any("Bravo" in t for t in turn0), h.turn_infos()


# An onset too short to transcribe (a click) after an EagerEndOfTurn: TurnResumed,
# and then the turn never ends (the core's turn tracker stays "in speech").
def test_a_click_after_an_eager_end_does_not_keep_the_turn_open_forever() -> None:
    h = Flux(f"{BASE}&eager_eot_threshold=0.5&eot_timeout_ms=1000")
    h.utterance(0.6)
    assert h.events()[-1] == "EagerEndOfTurn"
    h.speak(0.1)  # a click, under min_speech_duration_ms
    h.speak(3.0, speech=False)
    h.whisper()
    check_flux_invariants(h)
    assert h.events()[-1] == "EndOfTurn", h.events()


# Flux's fully-manual mode (docs/flux/own-turn-detection, changelog 2026-08-28):
# eot_threshold=1.0 with eot_timeout_ms=30000.
def test_fully_manual_mode_is_accepted() -> None:
    o = parse_flux_query(items("model=flux-general-en&eot_threshold=1.0&eot_timeout_ms=30000"))
    assert o.eot_threshold == 1.0


def test_configure_to_manual_mode_is_accepted() -> None:
    h = Flux(BASE)
    h.text({"type": "Configure", "thresholds": {"eot_threshold": 1.0}})
    assert h.sent[-1]["type"] == "ConfigureSuccess", h.sent[-1]


# eager_eot_threshold must be <= eot_threshold (Flux's docs); accepted here, and then
# EagerEndOfTurn can never fire.
def test_eager_above_eot_is_refused() -> None:
    with pytest.raises(ProtocolError):
        parse_flux_query(items("model=flux-general-en&eot_threshold=0.6&eager_eot_threshold=0.8"))


def test_configure_eager_above_eot_is_refused() -> None:
    h = Flux(BASE)
    h.text({"type": "Configure", "thresholds": {"eager_eot_threshold": 0.9}})
    assert h.sent[-1]["type"] == "ConfigureFailure", h.sent[-1]


# The SDK types Configure.keyterms as str | list[str].
def test_configure_accepts_a_single_keyterm_string() -> None:
    h = Flux(BASE)
    h.text({"type": "Configure", "keyterms": "Baseten"})
    assert h.sent[-1]["type"] == "ConfigureSuccess", h.sent[-1]


# Configure.language_hints (LiveKit sends it from update_options(language_hint=...)): the
# language options cannot change mid-stream here; refused, nothing applied.
def test_configure_language_hints_are_refused_not_ignored() -> None:
    h = Flux("model=flux-general-multi&language_hint=en")
    h.text({"type": "Configure", "language_hints": ["de"], "thresholds": {"eot_threshold": 0.9}})
    assert h.sent[-1]["type"] == "ConfigureFailure", h.sent[-1]
    assert h.core.events.turns.threshold == 0.7  # nothing of the message applied


# Flux's docs: with flux-general-multi every TurnInfo carries `languages`.
def test_flux_general_multi_turn_infos_carry_languages() -> None:
    h = Flux("model=flux-general-multi")
    h.utterance(0.9)
    assert all("languages" in m for m in h.turn_infos()), h.turn_infos()[0]


# docs/stt.md: "any other name is refused" (only flux-general-en / -multi).
def test_an_unknown_flux_model_name_is_refused() -> None:
    with pytest.raises(ProtocolError):
        parse_flux_query(items("model=flux-general-es"))


# wants_flux lowercases the model; parse_flux_query does not.
def test_a_flux_model_in_capitals_is_flux() -> None:
    assert parse_flux_query(items("model=Flux-General-En")).model == "flux-general-en"


# Configure carrying profanity_filter=true (pipecat sends it mid-stream) is answered
# ConfigureSuccess although the query refuses profanity_filter=true.
def test_configure_profanity_filter_true_is_refused_like_the_query() -> None:
    h = Flux(BASE)
    h.text({"type": "Configure", "profanity_filter": True})
    assert h.sent[-1]["type"] == "ConfigureFailure", h.sent[-1]


# A turn that showed StartOfTurn (and a partial's words) whose only final comes back empty
# never gets an EndOfTurn: neither the model's nor the timeout's.
def test_a_started_turn_always_ends_even_if_its_final_is_empty() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)  # StartOfTurn "Alpha one."
    h.speak(0.7, speech=False)
    h.score(0.9)
    answer(h, JobKind.FINAL, [])  # the final heard nothing (noise)
    h.speak(3.0, speech=False)
    assert h.events()[-1] == "EndOfTurn", h.events()


# Same with a final whose transcription failed (FinalFailed).
def test_a_started_turn_always_ends_even_if_its_final_failed() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)
    h.speak(0.7, speech=False)
    h.score(0.9)
    h.whisper(fail=True)
    h.speak(3.0, speech=False)
    assert h.events()[-1] == "EndOfTurn", h.events()


# The same, as a client that streams a recording faster than real time and then sends
# CloseStream (LiveKit: push_frame ... end_input()): every turn in the recording merges
# into turn 0, and no EndOfTurn at all goes out.
def test_faster_than_real_time_stream_then_close_stream_keeps_its_turns() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    plan = [True] * 32 + [False] * 63 + [True] * 32 + [False] * 63  # 1 s, 2 s, 1 s, 2 s
    for _ in plan:
        h.now += WINDOW_S / 10  # ten times real time
        h.audio(b"\x01\x00" * WINDOW_SAMPLES)
    h.text({"type": "CloseStream"})
    done = 0
    for _ in range(200):
        for job_id, job in sorted(h.jobs.items()):
            if job.worker == VAD_WORKER:
                h.jobs.pop(job_id)
                n = len(job.payload[1])
                probs = np.array(
                    [SPEECH if plan[min(done + i, len(plan) - 1)] else SILENCE for i in range(n)]
                )
                done += n
                h.apply(h.session.on_result(job_id, VadResult(probs, job.payload[0]), h.now))
        h.score(0.3)
        answer(h, JobKind.FINAL, A)
        if h.closes:
            break
    assert [m["event"] for m in h.turn_infos()].count("EndOfTurn") >= 1, h.turn_infos()
    assert max(m["turn_index"] for m in h.turn_infos()) == 1


# -- the early eager end against forced cuts, ForceEndTurn and resumes (a reviewer's probes) --------
EAGER = f"{BASE}&eager_eot_threshold=0.5&eot_timeout_ms=1000"


def _long_utterance_cut_in_its_pause(h: Flux, p: float) -> None:
    """29.8 s of speech: 0.2 s into the pause the speculative final and the early score are in
    (eager end sent), then the 30 s cap cuts the utterance inside the pause (a forced final whose
    audio differs from the speculative one: the speculative job is cancelled, re-decoded)."""
    h.speak(29.8)
    answer(h, JobKind.PARTIAL, A)
    h.speak(0.2, speech=False)
    answer(h, JobKind.FINAL, A)  # the speculative final
    h.score(p)


def test_forced_cut_after_early_eager_then_final_fails() -> None:
    h = Flux(EAGER)
    _long_utterance_cut_in_its_pause(h, 0.9)
    assert h.events()[-1] == "EagerEndOfTurn", h.events()
    h.speak(0.2, speech=False)  # the cap: a forced final (new job)
    h.whisper(fail=True)
    h.speak(3.0, speech=False)
    check_flux_invariants(h)


def test_forced_cut_after_early_eager_then_final_empty() -> None:
    h = Flux(EAGER)
    _long_utterance_cut_in_its_pause(h, 0.9)
    h.speak(0.2, speech=False)
    answer(h, JobKind.FINAL, [])
    h.speak(3.0, speech=False)
    check_flux_invariants(h)


def test_a_forced_cut_that_changes_the_announced_final_resumes_the_turn() -> None:
    """The eager end's transcript will not be the final's: TurnResumed says so (the reply
    prepared for it is void), then EndOfTurn carries the final's words."""
    h = Flux(EAGER)
    _long_utterance_cut_in_its_pause(h, 0.9)
    h.speak(0.2, speech=False)
    answer(h, JobKind.FINAL, B)
    h.speak(3.0, speech=False)
    check_flux_invariants(h)
    assert h.events()[-3:] == ["TurnResumed", "Update", "EndOfTurn"], h.events()
    assert h.turn_infos()[-1]["transcript"] == "Bravo two."


def test_forced_cut_in_a_pause_without_eager_ends_the_turn() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    _long_utterance_cut_in_its_pause(h, 0.9)
    h.speak(0.2, speech=False)
    answer(h, JobKind.FINAL, B)
    h.speak(3.0, speech=False)
    assert h.events()[-1] == "EndOfTurn", h.events()


def test_force_end_turn_after_early_eager_keeps_the_eager_transcript() -> None:
    h = Flux(EAGER)
    _early_in_the_pause(h, 0.6)
    h.text({"type": "ForceEndTurn"})
    h.speak(0.2, speech=False)
    h.whisper()
    h.speak(2.0, speech=False)
    check_flux_invariants(h)
    assert h.events()[-1] == "EndOfTurn"


def test_turn_resumed_window_does_not_go_back_to_the_turn_start() -> None:
    h = Flux(EAGER)
    _early_in_the_pause(h, 0.6)
    h.speak(0.3)  # speech within the pause: TurnEndVoided -> TurnResumed
    eager, resumed = h.turn_infos()[-2:]
    assert resumed["event"] == "TurnResumed"
    assert resumed["audio_window_end"] >= eager["audio_window_end"], (eager, resumed)


def test_core_announces_once_and_voids_only_what_it_announced() -> None:
    h = Flux(EAGER)
    seen: list = []
    encode = h.session.codec.encode
    h.session.codec.encode = lambda e, now: (seen.append(e), encode(e, now))[1]
    _early_in_the_pause(h, 0.6)
    h.speak(0.3)
    h.whisper()
    h.speak(0.2, speech=False)
    h.whisper()
    h.score(0.9)
    h.speak(0.5, speech=False)
    kinds = [type(e).__name__ for e in seen if isinstance(e, (TurnEndLikely, TurnEndVoided))]
    assert kinds == ["TurnEndLikely", "TurnEndVoided", "TurnEndLikely"], kinds
    check_flux_invariants(h)


# -- a property over arbitrary interleavings ----------------------------------------------------
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(
    actions=st.lists(
        st.sampled_from(
            ["speech"] * 4
            + ["silence"] * 4
            + [
                "partial",
                "final",
                "final",
                "empty",
                "fail",
                "score",
                "score",
                "force",
                "configure",
                "tick",
            ]
        ),  # fmt: skip
        min_size=5,
        max_size=100,
    ),
    # under eager, in the eager band (0.4-0.7), over eot (0.7; 0.8 after a Configure)
    scores=st.lists(st.sampled_from([0.2, 0.5, 0.6, 0.75, 0.95]), min_size=1, max_size=8),
    eager=st.sampled_from([True, True, False]),
    close_at=st.none() | st.integers(0, 100),
)
def test_every_flux_interleaving_keeps_flux_order_and_ends_clean(actions, scores, eager, close_at):
    """Whatever the order of audio, results, scores, ForceEndTurn, Configure and CloseStream:
    Flux's state machine holds (StartOfTurn first in a turn, TurnResumed only after an eager
    end, EndOfTurn's transcript the eager one's, turn_index counting turns), sequence_id counts
    every message, and the session ends with every job released."""
    h = Flux(f"{BASE}&eot_timeout_ms=1000" + ("&eager_eot_threshold=0.4" if eager else ""))
    for step, action in enumerate(actions):
        if h.core.done:
            break
        if step == close_at:
            h.text({"type": "CloseStream"})
        elif action in ("speech", "silence"):
            h.speak(0.2, speech=action == "speech")
        elif action == "partial":
            answer(h, JobKind.PARTIAL, A)
        elif action in ("final", "empty"):
            answer(h, JobKind.FINAL, B if action == "final" else [])
        elif action == "fail":
            h.whisper(fail=True)
        elif action == "score":
            h.score(scores[step % len(scores)])
        elif action == "force":
            h.text({"type": "ForceEndTurn"})
        elif action == "configure":
            h.text({"type": "Configure", "thresholds": {"eot_threshold": 0.8}})
        else:
            h.tick(3.0)
    if not h.core.done:
        h.text({"type": "CloseStream"})
        for _ in range(100):
            if h.core.done:
                break
            h.vad(False)
            h.score(0.5)
            h.whisper()
    assert h.core.done and not h.jobs and not h.core.outstanding_jobs
    assert [m["sequence_id"] for m in h.sent] == list(range(len(h.sent)))
    check_flux_invariants(h)
    assert len(h.closes) == 1


# -- StartOfTurn as soon as there is speech to transcribe -----------------------------------------
def test_start_of_turn_comes_with_min_speech_before_any_transcript() -> None:
    """Flux's StartOfTurn is its barge-in signal (pipecat interrupts the bot on it): it goes out in
    the VAD window that completes min_speech_duration_ms (250 ms), not with the first partial
    (0.5 s of speech and a decode later); its transcript is empty, the words come as Updates."""
    h = Flux(BASE)
    h.speak(0.5, speech=False)
    h.speak(0.224)  # 7 windows: under 250 ms of speech
    assert h.events() == []
    h.speak(0.032)  # the 8th completes it
    (start,) = h.turn_infos()
    assert (start["event"], start["transcript"], start["words"]) == ("StartOfTurn", "", [])
    assert start["audio_window_start"] < 0.5 < start["audio_window_end"]
    assert not any(j.worker not in (VAD_WORKER, TURN_WORKER) for j in h.jobs.values())
    h.speak(0.5)
    h.whisper()  # the first partial
    assert h.events() == ["StartOfTurn", "Update"]
    check_flux_invariants(h)


def test_a_click_starts_no_turn() -> None:
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    for _ in range(3):
        h.speak(0.128)  # 4 windows: a click, Dropped
        h.speak(0.5, speech=False)
    h.speak(2.0, speech=False)
    assert h.turn_infos() == []


def test_a_turn_whose_only_utterance_is_heard_as_nothing_ends_empty() -> None:
    h = Flux(BASE)
    h.speak(1.0)
    h.whisper([])  # partials of noise: no words
    h.speak(0.7, speech=False)
    h.score(0.9)
    h.whisper([])  # the final: no words
    assert h.events() == ["StartOfTurn", "EndOfTurn"]
    end = h.turn_infos()[-1]
    assert (end["trigger"], end["transcript"]) == ("empty", "")
    assert end["audio_window_end"] >= h.turn_infos()[0]["audio_window_end"]  # not its start
    h.utterance(0.9)  # the next turn starts afresh
    assert h.events()[2:] == ["StartOfTurn", "Update", "EndOfTurn"]
    assert h.turn_infos()[-1]["turn_index"] == 1
    check_flux_invariants(h)


def test_an_empty_final_keeps_the_turn_open_while_the_next_utterance_is_heard() -> None:
    """Noise, a short pause, then speech: the noise's empty final comes back while the speech is
    under way, so the turn it started is the speech's turn, with one StartOfTurn."""
    h = Flux(BASE)
    h.speak(1.0)
    h.speak(0.35, speech=False)  # the noise's final is asked for
    h.speak(0.5)  # speech, confirmed, before that final is back
    answer(h, JobKind.FINAL, [])
    assert h.events() == ["StartOfTurn"]
    h.whisper()  # its partial
    h.speak(0.7, speech=False)
    h.score(0.9)
    h.whisper()
    assert h.events() == ["StartOfTurn", "Update", "EndOfTurn"]
    assert h.turn_infos()[-1]["trigger"] == "model"
    check_flux_invariants(h)


def test_the_next_turn_starts_at_once_when_its_speech_came_before_the_end_of_turn() -> None:
    """ForceEndTurn, and the speaker goes on while the forced final is still decoding: the next
    turn's StartOfTurn follows the EndOfTurn at once, not with its first partial."""
    h = Flux(BASE)
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)
    h.text({"type": "ForceEndTurn"})  # A's final is asked for
    h.speak(0.3)  # the next turn's speech, confirmed
    assert h.events() == ["StartOfTurn", "Update"]
    answer(h, JobKind.FINAL, A)
    assert h.events() == ["StartOfTurn", "Update", "EndOfTurn", "StartOfTurn"]
    assert [m["turn_index"] for m in h.turn_infos()] == [0, 0, 0, 1]
    assert h.turn_infos()[2]["trigger"] == "manual"
    assert h.turn_infos()[-1]["transcript"] == ""
    h.speak(0.5)
    answer(h, JobKind.PARTIAL, B)
    assert h.events()[-1] == "Update" and h.turn_infos()[-1]["transcript"] == "Bravo two."
    check_flux_invariants(h)


# -- a reviewer's probes: stale ends, a forced cut heard as nothing -------------------------------
def test_a_stale_end_of_turn_does_not_end_the_next_turn_before_its_speech() -> None:
    """Turn 0 gets two ends (ForceEndTurn's manual one, then the eot timeout's), both queued
    behind A's slow final; meanwhile the user starts B (confirmed), whose StartOfTurn follows
    the first end at once. The second end is stale: it must not end B's turn before its words
    (a reviewer's probe)."""
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    h.speak(1.0)  # A: StartOfTurn
    answer(h, JobKind.PARTIAL, A)  # Update "Alpha one."
    h.speak(0.4, speech=False)  # A's final asked for (still decoding), its score too
    h.score(0.3)  # under eot_threshold: the turn stays open
    h.text({"type": "ForceEndTurn"})  # the client ends the turn: Finalized queued behind A
    h.speak(1.0, speech=False)  # eot_timeout_ms of silence: the core's timeout end, queued too
    h.speak(0.5)  # B: the user starts the next turn (confirmed)
    answer(h, JobKind.FINAL, A)  # A's final is back: everything queued goes out
    check_flux_invariants(h)
    ends = [m for m in h.turn_infos() if m["event"] == "EndOfTurn"]
    # Turn 0 ends once, with A; B's turn stays open for B's words (nothing has ended it yet).
    assert [(m["turn_index"], m["transcript"]) for m in ends] == [(0, "Alpha one.")], [
        (m["event"], m["turn_index"], m["transcript"], m.get("trigger")) for m in h.turn_infos()
    ]


def test_a_forced_cut_whose_first_part_is_unheard_does_not_end_the_turn_mid_speech() -> None:
    """31 s of uninterrupted speech whose first 30 s Whisper hears as nothing (noise, music, a
    language it drops) and whose rest is words: the 30 s cut's empty final must not end the turn
    (``trigger: empty``) while its rest, confirmed as speech too, goes on (a reviewer's probe)."""
    h = Flux(f"{BASE}&eot_timeout_ms=1000")
    h.speak(31.0)  # the 30 s cap cuts the utterance; the speech goes on in its continuation
    answer(h, JobKind.PARTIAL, [])  # the partials hear nothing
    answer(h, JobKind.FINAL, [])  # the cut's final: nothing either
    h.speak(1.0)  # still the same stretch of speech
    answer(h, JobKind.PARTIAL, A)
    h.speak(0.4, speech=False)
    h.score(0.9)
    answer(h, JobKind.FINAL, A)
    h.speak(2.0, speech=False)
    check_flux_invariants(h)
    got = [(m["event"], m["turn_index"], m["transcript"], m.get("trigger")) for m in h.turn_infos()]
    ends = [(i, t, trig) for e, i, t, trig in got if e == "EndOfTurn"]
    assert ends == [(0, "Alpha one.", "model")], got  # one turn, ended once, after the speech


def test_a_second_force_end_turn_for_the_same_turn_does_not_end_the_next_one() -> None:
    """Two ForceEndTurns (a client's retry, or an app and its framework both sending one) while
    A's final decodes and before B begins: both end A's turn; the second must not end B's,
    which started when the first ended (a reviewer's probe)."""
    h = Flux(BASE)
    h.speak(1.0)
    answer(h, JobKind.PARTIAL, A)
    h.text({"type": "ForceEndTurn"})
    h.text({"type": "ForceEndTurn"})  # both before B: A's turn is the one they end
    h.speak(0.5)  # B, confirmed
    answer(h, JobKind.FINAL, A)
    check_flux_invariants(h)
    got = [(m["event"], m["turn_index"], m["transcript"], m.get("trigger")) for m in h.turn_infos()]
    ends = [(i, t) for e, i, t, _ in got if e == "EndOfTurn"]
    assert ends == [(0, "Alpha one.")], got
