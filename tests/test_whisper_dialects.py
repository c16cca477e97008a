"""The STT dialects without sockets: Deepgram's live protocol around the one core (query string,
audio edge, Results / SpeechStarted / UtteranceEnd / Metadata / Error frames, finalize, idle
deadline), and Baseten's opt-in events. The driver's part is played by a harness that resolves
jobs by hand: VAD windows as speech or silence, Whisper jobs with a fixed transcript."""

from __future__ import annotations

import hashlib
import io
import json
import wave
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scripts.clients.stt import v1_metadata
from speech_common.audio import alaw_decode, alaw_encode, mulaw_encode
from speech_common.driver import Cancel, Close, Command, Send, Submit
from speech_common.vad import WINDOW_SAMPLES, VadResult
from speech_common.ws import CloseCode, ProtocolError
from tests.whisper_helpers import PUBLISHED_TRANSCRIPTION_KEYS
from whisper_streaming.codec_session import CodecSession
from whisper_streaming.dialects import (
    BasetenCodec,
    DeepgramCodec,
    choose_codec,
    query_items,
)
from whisper_streaming.dialects.deepgram import (
    IDLE_TIMEOUT_S,
    MIN_ENDPOINTING_MS,
    Transcoder,
    parse_query,
    parse_wav_header,
)
from whisper_streaming.engine import JobKind, Segment, Transcript, Word
from whisper_streaming.protocol import TURN_WORKER, VAD_WORKER, CoreLimits, SttCore

SPEECH, SILENCE = 0.95, 0.01
WINDOW_S = WINDOW_SAMPLES / 16000
# LiveKit's (livekit-plugins-deepgram 1.8.9 defaults) and pipecat's (DeepgramSTTService,
# pipecat-ai 1.14.0 defaults, through deepgram-sdk 7.17) queries, as the server logged them.
LIVEKIT_QUERY = ("model=nova-3&punctuate=true&smart_format=false&no_delay=true&interim_results=true"
                 "&encoding=linear16&vad_events=true&sample_rate=16000&channels=1&endpointing=25"
                 "&filler_words=true&profanity_filter=false&numerals=false&mip_opt_out=false"
                 "&language=en-US")  # fmt: skip
PIPECAT_QUERY = ("_p=/v1/listen?channels=1&detect_entities=false&diarize=false&dictation=false"
                 "&encoding=linear16&interim_results=true&language=en&model=nova-3-general"
                 "&multichannel=false&numerals=false&punctuate=true&sample_rate=16000"
                 "&smart_format=false")  # fmt: skip
BASE = "encoding=linear16&sample_rate=16000"


def final_words() -> list[Word]:
    return [Word("Um,", 0.1, 0.2, 0.6), Word("hello", 0.2, 0.5, 0.9),
            Word("world.", 0.5, 0.9, 0.8)]  # fmt: skip


def items(query: str) -> list[tuple[str, str]]:
    params = SimpleNamespace(multi_items=lambda: [tuple(p.split("=", 1)) for p in query.split("&")])
    return query_items(SimpleNamespace(query_params=params))


@dataclass
class Harness:
    """A session of either dialect; ``sent`` holds what the client got (dicts), ``closes`` the
    close commands."""

    query: str = BASE
    limits: CoreLimits = field(default_factory=CoreLimits)
    language: str = "en"
    now: float = 0.0
    jobs: dict[int, Submit] = field(default_factory=dict)
    submitted: list[Submit] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)

    def __post_init__(self) -> None:
        core = SttCore(self.limits, ["en", "de"])
        codec = choose_codec(core, items(self.query) if self.query else [],
                             request_id="req-1", created="2026-01-01T00:00:00.000Z")  # fmt: skip
        self.session = CodecSession(core, codec)
        self.apply(self.session.start(self.now))

    @property
    def core(self) -> SttCore:
        return self.session.core

    def apply(self, commands: list[Command]) -> None:
        for command in commands:
            assert not self.closes, f"{command} after the close"
            if isinstance(command, Send):
                self.sent.append(command.message)
            elif isinstance(command, Submit):
                self.jobs[command.job_id] = command
                self.submitted.append(command)
            elif isinstance(command, Cancel):
                self.jobs.pop(command.job_id, None)
            elif isinstance(command, Close):
                self.closes.append(command)
        if self.core.done:
            assert not self.jobs and not self.core.outstanding_jobs

    def text(self, payload: object) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.apply(self.session.on_text(text, self.now))

    def audio(self, data: bytes) -> None:
        self.apply(self.session.on_bytes(data, self.now))

    def vad(self, speech: bool) -> None:
        for job_id, job in sorted(self.jobs.items()):
            if job.worker == VAD_WORKER:
                self.jobs.pop(job_id)
                probs = np.full(len(job.payload[1]), SPEECH if speech else SILENCE)
                result = VadResult(probs, job.payload[0])
                self.apply(self.session.on_result(job_id, result, self.now))

    def speak(self, seconds: float, speech: bool = True, frame: bytes | None = None) -> None:
        frame = frame or b"\x01\x00" * WINDOW_SAMPLES
        for _ in range(round(seconds / WINDOW_S)):
            self.now += WINDOW_S
            self.audio(frame)
            self.vad(speech)

    def whisper(self, words: list[Word] | None = None, fail: bool = False) -> None:
        """Answer every Whisper job: finals with timed words, partials with text only."""
        for job_id, job in sorted(self.jobs.items()):
            if job.worker in (VAD_WORKER, TURN_WORKER):
                continue
            self.jobs.pop(job_id)
            final = job.payload.kind is JobKind.FINAL
            ws = words if words is not None else final_words()
            text = " ".join(w.word for w in ws)
            seg = Segment(text, job.payload.offset_s, job.payload.offset_s + 1, -0.2, 0.01,
                          ws if final else [])  # fmt: skip
            result: object = RuntimeError("boom") if fail else Transcript([seg], "en", None)
            self.apply(self.session.on_result(job_id, result, self.now))

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.session.on_timer(self.now))

    def types(self) -> list[str]:
        return [m.get("type") for m in self.sent]

    def results(self, **match: Any) -> list[dict]:
        return [m for m in self.sent if m.get("type") == "Results"
                and all(m.get(k) == v for k, v in match.items())]  # fmt: skip


def utterance(h: Harness, pause_s: float = 0.7) -> None:
    h.speak(1.0)
    h.whisper()
    h.speak(pause_s, speech=False)
    h.whisper()


# -- choosing the dialect -------------------------------------------------------------------------
def test_the_query_string_chooses_the_dialect() -> None:
    core = SttCore(CoreLimits(), ["en"])
    assert isinstance(choose_codec(core, []), BasetenCodec)
    assert isinstance(choose_codec(core, [("_p", "/v1/tts/live")]), BasetenCodec)
    assert isinstance(choose_codec(core, [("model", "nova-3")]), DeepgramCodec)
    assert isinstance(choose_codec(core, [("_p", "/v1/listen")]), DeepgramCodec)
    assert isinstance(choose_codec(core, items(PIPECAT_QUERY)), DeepgramCodec)
    assert isinstance(choose_codec(core, items(LIVEKIT_QUERY)), DeepgramCodec)


def test_an_sdk_path_in_p_is_opened_up() -> None:
    """deepgram-sdk appends /v1/listen?... to its base URL: with ``?_p=`` its first parameter
    lands inside ``_p``; nothing is lost."""
    got = items(PIPECAT_QUERY)
    assert got[0] == ("_p", "/v1/listen") and ("channels", "1") in got
    assert ("smart_format", "false") in got and len(got) == 14
    assert items("keyterm=a&keyterm=b b") == [("keyterm", "a"), ("keyterm", "b b")]
    assert query_items(object()) == []


# -- the query string -------------------------------------------------------------------------------
def test_livekit_and_pipecat_defaults_are_honoured() -> None:
    lk = parse_query(items(LIVEKIT_QUERY))
    assert (lk.language, lk.encoding, lk.sample_rate, lk.channels) == ("en", "linear16", 16000, 1)
    assert lk.interim_results and lk.punctuate and lk.vad_events and lk.filler_words
    assert lk.endpointing_ms == 25 and lk.utterance_end_ms is None
    assert sorted(lk.ignored) == ["mip_opt_out", "no_delay"]
    pc = parse_query(items(PIPECAT_QUERY))
    assert pc.language == "en" and pc.interim_results and pc.punctuate and not pc.vad_events
    assert pc.endpointing_ms == 10 and not pc.ignored  # Deepgram's default endpointing


def test_endpointing_sets_the_silence_timeout_never_below_the_floor() -> None:
    def silence(query: str) -> int:
        return Harness(f"{BASE}&{query}").core.config.vad.min_silence_duration_ms

    assert silence("endpointing=25") == MIN_ENDPOINTING_MS
    assert silence("endpointing=800") == 800
    assert silence("endpointing=false") == MIN_ENDPOINTING_MS
    assert silence("model=nova-3") == MIN_ENDPOINTING_MS


def test_a_session_is_configured_from_the_query() -> None:
    h = Harness("encoding=mulaw&sample_rate=8000&language=de-DE&interim_results=true"
                "&keyterm=Baseten&keyterm=Truss&keywords=Orpheus:2&keywords=Mute:-5")  # fmt: skip
    c = h.core.config
    assert (c.streaming.encoding, c.streaming.sample_rate) == ("pcm_mulaw", 8000)
    assert c.streaming.enable_partial_transcripts and c.whisper.show_word_timestamps
    assert c.whisper.audio_language == "de"
    assert (
        c.whisper.prompt == "Glossary: Baseten, Truss, Orpheus."
    )  # a negative boost has no prompt form
    multi = Harness(f"{BASE}&language=multi&language_hint=de,en").core.config.whisper
    assert multi.audio_language == "auto" and multi.language_options == ["de", "en"]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("diarize=true", "diarize"),
        ("diarize_model=latest", "diariz"),
        ("redact=pci", "redact"),
        ("profanity_filter=true", "profanity_filter"),
        ("detect_entities=true", "detect_entities"),
        ("callback=https://example.com/cb", "callback"),
        ("channels=2&multichannel=true", "multichannel"),
        ("interim_results=maybe", "interim_results"),
        ("sample_rate=fast", "sample_rate"),
        ("channels=9", "channels"),
        ("endpointing=-1", "endpointing"),
        ("language=!!", "language"),
        ("language=fr", "'fr'"),  # a language this model does not speak
        ("sample_rate=2000", "sample_rate"),
        ("eot_threshold=0.2", "eot_threshold"),  # Flux's range is 0.5-0.9
        ("eot_timeout_ms=soon", "eot_timeout_ms"),
    ],
)
def test_what_cannot_be_honoured_is_refused_like_deepgram(query: str, words: str) -> None:
    h = Harness(f"{BASE}&{query}" if "sample_rate" not in query else f"encoding=linear16&{query}")
    (error,) = h.sent
    assert error["type"] == "Error" and error["variant"] == "INVALID_QUERY_PARAMETER"
    assert words in error["description"]
    assert h.closes[0].code == CloseCode.POLICY_VIOLATION
    assert h.closes[0].reason == "INVALID_QUERY_PARAMETER" and h.core.done


@pytest.mark.parametrize("query", ["encoding=opus&sample_rate=48000", "encoding=linear16"])
def test_undecodable_encodings_and_a_missing_rate_are_refused(query: str) -> None:
    h = Harness(query)
    assert h.sent[0]["variant"] == "INVALID_QUERY_PARAMETER" and h.closes[0].code == 1008


def test_parameters_that_cannot_change_the_result_are_accepted() -> None:
    h = Harness(f"{BASE}&tag=a&tag=b&mip_opt_out=true&version=latest&no_delay=true"
                "&callback_method=POST&numerals=true&smart_format=true&token=x")  # fmt: skip
    assert not h.sent and not h.core.done
    assert sorted(h.session.codec.options.ignored) == [
        "callback_method", "mip_opt_out", "no_delay", "tag", "tag", "version"]  # fmt: skip


# -- one session, end to end (sans I/O) --------------------------------------------------------------
def test_results_speech_events_utterance_end_finalize_and_metadata() -> None:
    h = Harness(f"{BASE}&interim_results=true&punctuate=true&vad_events=true"
                "&utterance_end_ms=1000&extra=team:asr")  # fmt: skip
    h.speak(1.0)
    h.whisper()  # partials
    h.speak(0.7, speech=False)
    h.whisper()  # the final
    started, *rest = h.sent
    assert started == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.0}
    interim = h.results(is_final=False)
    assert interim and all(not m["speech_final"] for m in interim)
    (final,) = h.results(is_final=True)
    assert final["speech_final"] and not final["from_finalize"]
    alternative = final["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Hello world."  # filler_words defaults to false
    assert alternative["words"] == [
        {"word": "hello", "start": 0.2, "end": 0.5, "confidence": 0.9, "punctuated_word": "Hello"},
        {"word": "world", "start": 0.5, "end": 0.9, "confidence": 0.8, "punctuated_word": "world."},
    ]
    assert alternative["confidence"] == pytest.approx(0.85)
    assert final["metadata"]["extra"] == {"team": "asr"}
    assert final["metadata"]["request_id"] == "req-1" and final["channel_index"] == [0, 1]
    assert final["start"] == 0.0 and final["duration"] > 1.0
    assert "UtteranceEnd" not in h.types()  # 0.7 s of silence so far
    h.speak(0.5, speech=False)
    assert h.sent[-1] == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.9}
    h.speak(1.0, speech=False)
    assert h.types().count("UtteranceEnd") == 1  # once per run of words
    h.text({"type": "Finalize"})  # nothing pending: an empty from_finalize result
    empty = h.sent[-1]
    assert empty["from_finalize"] and empty["is_final"] and not empty["speech_final"]
    assert empty["channel"]["alternatives"][0] == {"transcript": "", "confidence": 0.0, "words": []}
    h.text({"type": "KeepAlive"})
    h.text({"type": "CloseStream"})
    h.speak(0.1, speech=False)
    metadata = h.sent[-1]
    assert metadata["type"] == "Metadata" and metadata["channels"] == 1
    audio = b"\x01\x00" * WINDOW_SAMPLES * (round(1.0 / WINDOW_S) + round(2.2 / WINDOW_S))
    assert metadata["sha256"] == hashlib.sha256(audio).hexdigest()
    assert metadata["duration"] == pytest.approx(len(audio) / 2 / 16000, abs=1e-3)
    assert metadata["models"] == [final["metadata"]["model_uuid"]]
    assert h.closes[0].code == 1000 and h.core.done


def test_finalize_cuts_the_open_utterance_and_the_session_goes_on() -> None:
    h = Harness(f"{BASE}&punctuate=true")
    h.speak(1.0)
    h.text({"type": "Finalize"})
    h.whisper()
    (final,) = h.results()
    assert final["is_final"] and final["from_finalize"] and not final["speech_final"]
    assert len(h.results()) == 1  # answered by the final itself: no empty result
    h.speak(1.0)  # speech goes on: a new utterance
    h.speak(0.7, speech=False)
    h.whisper()
    assert [m["from_finalize"] for m in h.results()] == [True, False]
    assert not h.core.done


def test_finalize_waits_for_the_audio_the_vad_has_not_seen() -> None:
    h = Harness(BASE)
    h.speak(1.0)
    h.audio(b"\x01\x00" * WINDOW_SAMPLES * 3)  # a VAD job in flight
    h.text({"type": "Finalize"})
    assert not [j for j in h.jobs.values() if j.worker != VAD_WORKER]
    h.vad(True)
    (final,) = [j for j in h.jobs.values() if j.worker != VAD_WORKER]
    assert len(final.payload.audio) >= (round(1.0 / WINDOW_S) + 3) * WINDOW_SAMPLES


def test_eot_parameters_make_speech_final_the_turn_models_verdict() -> None:
    """With Flux's eot_* parameters speech_final marks the end of the speaker's turn, not every
    pause: a pause the turn model scores under eot_threshold keeps the turn open."""
    h = Harness(f"{BASE}&eot_threshold=0.7&eot_timeout_ms=5000")
    for score in (0.9, 0.6):
        h.speak(1.0)
        h.speak(0.7, speech=False)
        (turn,) = [i for i, j in h.jobs.items() if j.worker == TURN_WORKER]
        h.jobs.pop(turn)
        h.apply(h.session.on_result(turn, score, h.now))
        h.whisper()
    assert [m["speech_final"] for m in h.results(is_final=True)] == [True, False]
    plain = Harness(BASE)  # without them: every pause's final, and no turn job
    utterance(plain)
    assert plain.results()[0]["speech_final"]
    assert not any(j.worker == TURN_WORKER for j in plain.submitted)


def test_endpointing_false_sends_no_speech_final() -> None:
    h = Harness(f"{BASE}&endpointing=false")
    utterance(h)
    (final,) = h.results()
    assert final["is_final"] and not final["speech_final"]


def test_formatting_options() -> None:
    plain = Harness(BASE)  # punctuate off: lower case, no punctuation, no punctuated_word
    utterance(plain)
    alternative = plain.results()[0]["channel"]["alternatives"][0]
    assert alternative["transcript"] == "hello world"
    assert "punctuated_word" not in alternative["words"][0]

    fillers = Harness(f"{BASE}&punctuate=true&filler_words=true")
    utterance(fillers)
    assert fillers.results()[0]["channel"]["alternatives"][0]["transcript"] == "Um, hello world."

    h = Harness(f"{BASE}&smart_format=true&replace=hello:howdy&search=world&search=nope")
    utterance(h)
    message = h.results()[0]
    assert message["channel"]["alternatives"][0]["transcript"] == "howdy world."
    assert message["channel"]["search"] == [
        {"query": "world", "hits": [{"confidence": 0.8, "start": 0.5, "end": 0.9,
                                     "snippet": "world"}]},
        {"query": "nope", "hits": []},
    ]  # fmt: skip

    dictated = Harness(f"{BASE}&punctuate=true&dictation=true")
    utterance(dictated, 0.7)
    words = [Word("Hi", 0.1, 0.2, 0.9), Word("comma", 0.2, 0.3, 0.9), Word("you", 0.3, 0.4, 0.9),
             Word("question", 0.4, 0.5, 0.9), Word("mark", 0.5, 0.6, 0.9)]  # fmt: skip
    dictated.speak(1.0)
    dictated.whisper(words)
    dictated.speak(0.7, speech=False)
    dictated.whisper(words)
    assert dictated.results()[-1]["channel"]["alternatives"][0]["transcript"] == "Hi, you?"


def test_language_multi_names_each_results_language() -> None:
    h = Harness(f"{BASE}&language=multi")
    utterance(h)
    assert h.results()[0]["channel"]["alternatives"][0]["languages"] == ["en"]


def test_configure_replaces_the_key_terms_mid_stream() -> None:
    h = Harness(f"{BASE}&keyterm=Baseten")
    h.text({"type": "Configure", "keyterms": ["Truss", "Orpheus"], "features": {"punctuate": True}})
    assert h.sent[-1] == {"type": "ConfigureSuccess", "request_id": "req-1",
                          "keyterms": ["Truss", "Orpheus"]}  # fmt: skip
    utterance(h)
    finals = [j for j in h.submitted if j.worker != VAD_WORKER]
    assert finals[-1].payload.options.prompt == "Glossary: Truss, Orpheus."
    assert h.results()[0]["channel"]["alternatives"][0]["transcript"] == "Hello world."
    h.text({"type": "Configure", "features": {"diarize": True}})
    assert h.sent[-1]["type"] == "ConfigureFailure" and not h.core.done


def test_a_bad_control_message_is_a_schema_error_and_the_session_goes_on() -> None:
    h = Harness(BASE)
    for bad in ("{not json", '{"type": "Bogus"}', "[]"):
        h.text(bad)
        assert h.sent[-1]["type"] == "Error" and h.sent[-1]["variant"] == "SchemaError"
        assert h.sent[-1]["message"] == bad
    assert not h.core.done


def test_idle_for_ten_seconds_is_net_0001_and_keepalive_prevents_it() -> None:
    h = Harness(BASE)
    for _ in range(5):
        h.tick(IDLE_TIMEOUT_S * 0.6)
        h.text({"type": "KeepAlive"})
    assert not h.core.done
    h.tick(IDLE_TIMEOUT_S + 0.1)
    assert h.sent[-1]["type"] == "Error" and h.sent[-1]["variant"] == "NET-0001"
    assert (h.closes[0].code, h.closes[0].reason) == (1011, "NET-0001")


def test_an_empty_binary_frame_closes_the_stream() -> None:
    h = Harness(BASE)
    utterance(h)
    h.audio(b"")
    assert h.types()[-1] == "Metadata" and h.closes[0].code == 1000


def test_close_stream_before_any_audio() -> None:
    h = Harness("model=nova-3")  # no encoding: a WAV header is awaited
    h.text({"type": "CloseStream"})
    assert h.types() == ["Metadata"] and h.sent[0]["duration"] == 0
    assert h.closes[0].code == 1000


def test_admission_refusal_in_deepgrams_shape() -> None:
    h = Harness(BASE)
    refusal = ProtocolError("overloaded", "too many sessions", CloseCode.TRY_AGAIN_LATER, 5.0)
    send, close = h.session.codec.refusal(refusal)
    assert send.message["type"] == "Error" and send.message["variant"] == "TOO_MANY_REQUESTS"
    assert (close.code, close.reason) == (1013, "TOO_MANY_REQUESTS")
    baseten = BasetenCodec(SttCore(CoreLimits(), ["en"])).refusal(refusal)
    assert baseten == [Close(1013, "too many sessions", refusal)]


# -- the audio edge -------------------------------------------------------------------------------
def _tone(n: int = 4000) -> np.ndarray:
    return (np.sin(np.arange(n) / 9.0) * 12000).astype("<i2")


def test_passthrough_for_mono_linear16_and_mulaw() -> None:
    for encoding, core in (("linear16", "pcm_s16le"), ("mulaw", "pcm_mulaw")):
        t = Transcoder(encoding, 1)
        assert t.core_encoding == core and t.feed(b"\x01\x02\x03") == b"\x01\x02\x03"


@pytest.mark.parametrize("encoding", ["alaw", "linear32", "linear16", "mulaw"])
def test_transcoded_audio_survives_any_split_and_stereo_is_mixed_down(encoding: str) -> None:
    tone = _tone()
    raw = {"alaw": lambda x: alaw_encode(x), "mulaw": lambda x: mulaw_encode(x),
           "linear16": lambda x: x.tobytes(),
           "linear32": lambda x: (x.astype("<i4") << 16).tobytes()}[encoding]  # fmt: skip
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    t = Transcoder(encoding, 2)
    data = raw(stereo)
    out = b"".join(t.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    got = np.frombuffer(out, "<f4")
    assert t.core_encoding == "pcm_f32le" and len(got) == len(tone) == t.frames
    assert np.max(np.abs(got - tone / 32768)) < 0.02  # G.711's quantisation at most


def test_alaw_decodes_the_reference_points() -> None:
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]


def _wav(rate: int, channels: int, width: int, frames: bytes) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return buffer.getvalue()


def test_without_an_encoding_a_wav_header_configures_the_session() -> None:
    h = Harness("model=nova-3")
    assert h.core.config is None and not h.core.done
    data = _wav(8000, 2, 2, np.repeat(_tone(2000), 2).tobytes())
    h.audio(data[:30])  # the header comes in pieces
    assert h.core.config is None
    h.audio(data[30:])
    assert h.core.config.streaming.sample_rate == 8000
    assert h.session.codec._transcoder.channels == 2 and not h.core.done
    assert parse_wav_header(data).data_offset == 44


def test_audio_that_is_not_wav_without_an_encoding_is_data_0000() -> None:
    h = Harness("model=nova-3")
    h.audio(b"OggS" + b"\0" * 100)
    assert h.sent[0]["variant"] == "DATA-0000"
    assert (h.closes[0].code, h.closes[0].reason) == (1008, "DATA-0000")


# -- Baseten's protocol: the opt-in events ----------------------------------------------------------
def baseten(**streaming: Any) -> Harness:
    h = Harness(query="")
    meta = v1_metadata(partials=False)
    meta["streaming_whisper_params"].update(streaming)
    h.text(meta)
    return h


def test_baseten_events_speech_started_utterance_end_finalize_and_keep_alive() -> None:
    h = baseten(events=True, utterance_end_ms=1000)
    h.speak(1.0)
    assert h.sent == [{"type": "speech_started", "transcription_num": 0, "start_time": 0.0}]
    h.speak(0.7, speech=False)
    h.whisper()
    h.speak(0.5, speech=False)
    final, end = h.sent[1:]
    assert final["type"] == "transcription" and final["is_final"] and "from_finalize" not in final
    assert end == {"type": "utterance_end", "transcription_num": 0, "last_word_end": 0.9}
    h.text({"type": "keep_alive"})
    h.speak(1.0)
    h.text({"type": "finalize"})
    h.whisper()
    cut, done = h.sent[-2:]
    assert cut["type"] == "transcription" and cut["is_final"] and cut["from_finalize"] is True
    assert cut["transcription_num"] == 1 and done == {"type": "finalize",
                                                      "body": {"status": "finished"}}  # fmt: skip
    h.text({"type": "finalize"})  # nothing pending: just the answer
    assert h.sent[-1] == done and not h.core.done
    h.text({"type": "end_audio"})
    h.speak(0.1, speech=False)
    assert h.sent[-1] == {"type": "end_audio", "body": {"status": "finished"}}


def test_without_events_the_published_protocol_is_unchanged() -> None:
    h = baseten()
    h.speak(1.0)
    h.speak(0.7, speech=False)
    h.whisper()
    h.speak(1.5, speech=False)
    assert [m["type"] for m in h.sent] == ["transcription"]
    assert set(h.sent[0]) == set(PUBLISHED_TRANSCRIPTION_KEYS)
    for control in ("finalize", "keep_alive"):
        h2 = baseten()
        h2.text({"type": control})
        assert h2.closes[0].error.error_type == "invalid_message" and h2.closes[0].code == 1008


# -- properties over arbitrary interleavings (Deepgram's controls) ----------------------------------
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(
    actions=st.lists(
        st.sampled_from(
            ["speech"] * 4
            + ["silence"] * 4
            + ["whisper", "fail", "finalize", "keepalive", "tick", "bogus"]
        ),  # fmt: skip
        min_size=5,
        max_size=120,
    ),
    interim=st.booleans(),
    close_at=st.none() | st.integers(0, 120),
)
def test_every_deepgram_interleaving_ends_releases_and_keeps_order(actions, interim, close_at):
    h = Harness(f"{BASE}&interim_results={str(interim).lower()}&vad_events=true"
                "&utterance_end_ms=500")  # fmt: skip
    for step, action in enumerate(actions):
        if h.core.done:
            break
        if step == close_at:
            h.text({"type": "CloseStream"})
        elif action in ("speech", "silence"):
            h.speak(0.2, speech=action == "speech")
        elif action in ("whisper", "fail"):
            h.whisper(fail=action == "fail")
        elif action == "finalize":
            h.text({"type": "Finalize"})
        elif action == "keepalive":
            h.text({"type": "KeepAlive"})
        elif action == "tick":
            h.tick(3.0)
        else:
            h.text('{"type": "Nope"}')
    if not h.core.done:
        h.text({"type": "CloseStream"})
        for _ in range(100):
            if h.core.done:
                break
            h.vad(False)
            h.whisper()
    assert h.core.done and not h.jobs and not h.core.outstanding_jobs
    finals: set[tuple[float, float]] = set()
    for message in h.results():
        if message["is_final"]:
            assert message["duration"] >= 0
            finals.add((message["start"], message["duration"]))
    assert h.types()[-1] in ("Metadata", "Error")
    assert len(h.closes) == 1
