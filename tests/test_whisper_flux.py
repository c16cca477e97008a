"""Deepgram Flux's turn-based protocol (``whisper_streaming.dialects.flux``) without sockets: the
query, Connected, TurnInfo's events through a turn (StartOfTurn, Update, EagerEndOfTurn,
TurnResumed, EndOfTurn with its trigger), ForceEndTurn, CloseStream, Configure and errors. The
harness is the Deepgram dialect's: jobs resolved by hand."""

from __future__ import annotations

from typing import Any

import pytest

from speech_common.ws import CloseCode
from tests.test_whisper_dialects import Harness, items
from whisper_streaming.dialects import DeepgramCodec, FluxCodec, choose_codec
from whisper_streaming.dialects.flux import parse_flux_query
from whisper_streaming.protocol import TURN_WORKER, CoreLimits, SttCore

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


def test_a_turn_starts_with_its_first_words_and_the_model_ends_it() -> None:
    h = Flux(BASE)
    h.utterance(0.9)
    infos = h.turn_infos()
    assert infos[0]["event"] == "StartOfTurn" and infos[0]["transcript"]
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
