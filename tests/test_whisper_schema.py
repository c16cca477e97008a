"""whisper_streaming.schema: the three metadata shapes, strict validation, server message JSON."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from speech_common.audio import Encoding
from speech_common.driver import Close, Submit
from speech_common.ws import CloseCode
from whisper_streaming.codec_session import CodecSession
from whisper_streaming.protocol import CoreLimits
from whisper_streaming.schema import (
    ControlMessage,
    SegmentOut,
    SessionConfig,
    TranscriptionMessage,
    WordTimestamp,
    end_audio_message,
    health_message,
    parse_metadata,
)

VAD = {"threshold": 0.6, "min_silence_duration_ms": 400, "speech_pad_ms": 50}
STREAMING = {
    "encoding": "pcm_mulaw",
    "sample_rate": 8000,
    "enable_partial_transcripts": True,
    "partial_transcript_interval_s": 0.25,
    "stable_partials": True,
    "final_transcript_max_duration_s": 20,
    "events": True,
    "utterance_end_ms": 1500,
    "end_of_turn": True,
    "end_of_turn_threshold": 0.8,
    "end_of_turn_timeout_ms": 2000,
}
WHISPER = {
    "audio_language": "de",
    "prompt": "Baseten",
    "language_detection_only": False,
    "language_options": ["de", "en"],
    "show_word_timestamps": True,
    "beam_width": 4,
    "length_penalty": 1.5,
    "repetition_penalty": 1.2,
    "no_repeat_ngram_size": 3,
    "condition_on_previous_text": True,
}


def _check_custom(cfg: SessionConfig) -> None:
    assert cfg.vad.model_dump() == VAD
    assert cfg.streaming.model_dump() == STREAMING
    assert cfg.whisper.model_dump() == WHISPER


# -- shapes -------------------------------------------------------------------------------------
def test_v1_blog_client() -> None:
    raw = {
        "vad_params": {"threshold": 0.5, "min_silence_duration_ms": 300, "speech_pad_ms": 30},
        "streaming_whisper_params": {
            "encoding": "pcm_s16le",
            "sample_rate": 16000,
            "enable_partial_transcripts": True,
            "audio_language": "en",
            "show_word_timestamps": False,
        },
    }
    cfg = parse_metadata(raw)
    assert cfg.shape == "v1"
    assert cfg.streaming.enable_partial_transcripts is True
    assert cfg.streaming.sample_rate == 16000
    assert cfg.whisper.audio_language == "en"


def test_v1_all_fields_land_in_the_right_section() -> None:
    cfg = parse_metadata({"vad_params": VAD, "streaming_whisper_params": {**STREAMING, **WHISPER}})
    assert cfg.shape == "v1"
    _check_custom(cfg)


def test_v2() -> None:
    cfg = parse_metadata(
        {"vad_params": VAD, "streaming_params": STREAMING, "whisper_params": WHISPER}
    )
    assert cfg.shape == "v2"
    _check_custom(cfg)


def test_v3() -> None:
    cfg = parse_metadata(
        {"streaming_vad_config": VAD, "streaming_params": STREAMING, "whisper_params": WHISPER}
    )
    assert cfg.shape == "v3"
    _check_custom(cfg)


def test_empty_gives_documented_defaults() -> None:
    cfg = parse_metadata({})
    assert cfg.shape == "empty"
    assert cfg.vad.threshold == 0.5
    assert cfg.vad.min_silence_duration_ms == 300
    assert cfg.vad.speech_pad_ms == 30
    assert cfg.streaming.encoding == "pcm_s16le"
    assert cfg.streaming.sample_rate == 16000
    assert cfg.streaming.enable_partial_transcripts is False
    assert cfg.streaming.partial_transcript_interval_s == 0.5
    assert cfg.streaming.final_transcript_max_duration_s == 30
    assert cfg.whisper.audio_language == "en"
    assert cfg.whisper.prompt == ""
    assert cfg.whisper.language_options == []
    assert cfg.whisper.show_word_timestamps is False
    assert cfg.whisper.beam_width is None  # the deployment decides (whisper_beam_width)


def test_partial_sections_default_the_rest() -> None:
    cfg = parse_metadata({"streaming_params": {"sample_rate": 24000}})
    assert cfg.streaming.sample_rate == 24000
    assert cfg.streaming.encoding == "pcm_s16le"
    assert cfg.vad.threshold == 0.5 and cfg.whisper.audio_language == "en"
    cfg = parse_metadata({"vad_params": {}, "whisper_params": {"audio_language": "auto"}})
    assert cfg.whisper.audio_language == "auto"


def test_json_round_trip_input() -> None:
    raw = json.loads(json.dumps({"streaming_vad_config": VAD, "streaming_params": STREAMING}))
    assert parse_metadata(raw).streaming.final_transcript_max_duration_s == 20.0


# -- encodings ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["v1", "v2", "v3"])
def test_f32le_parses_in_every_shape(shape: str) -> None:
    streaming = {"encoding": "pcm_f32le", "sample_rate": 48000}
    vad_key = "streaming_vad_config" if shape == "v3" else "vad_params"
    section = "streaming_whisper_params" if shape == "v1" else "streaming_params"
    cfg = parse_metadata({vad_key: VAD, section: streaming})
    assert cfg.shape == shape
    assert (cfg.streaming.encoding, cfg.streaming.sample_rate) == ("pcm_f32le", 48000)


def _open_session(encoding: str) -> tuple[CodecSession, list[Any]]:
    core = CodecSession.baseten(CoreLimits(), ["en"])
    core.start(0.0)
    return core, core.on_text(json.dumps({"streaming_params": {"encoding": encoding}}), 0.0)


def test_the_encodings_a_session_accepts() -> None:
    assert {e.value for e in Encoding} == {"pcm_s16le", "pcm_mulaw", "pcm_f32le"}
    for encoding in Encoding:
        core, commands = _open_session(encoding.value)
        assert commands == [] and not core.done, encoding


@pytest.mark.parametrize("encoding", ["opus", "PCM_F32LE", "pcm_f32be", "float32", ""])
def test_other_encodings_are_refused_with_1003(encoding: str) -> None:
    core, commands = _open_session(encoding)
    (close,) = [c for c in commands if isinstance(c, Close)]
    assert close.code == CloseCode.UNSUPPORTED_DATA and core.done
    assert close.error.error_type == "unsupported_encoding"
    assert "pcm_f32le" in str(close.error)  # the message lists what is accepted


def test_f32le_nan_inf_and_out_of_range_frames_keep_the_session_open() -> None:
    core, _ = _open_session("pcm_f32le")  # 16 kHz: one frame of 512 samples is one VAD window
    frame = np.full(512, np.nan, "<f4")
    frame[::3], frame[1::3] = np.inf, -5.0
    commands = core.on_bytes(frame.tobytes(), 0.1)
    assert not core.done and not [c for c in commands if isinstance(c, Close)]
    (vad_job,) = [c for c in commands if isinstance(c, Submit)]
    windows = vad_job.payload[1]
    assert windows.shape == (1, 512)
    assert np.all(np.isfinite(windows)) and np.all(np.abs(windows) <= 1.0)


# -- rejections ---------------------------------------------------------------------------------
@pytest.mark.parametrize("raw", [[], "x", None, 3, [{"vad_params": {}}], True])
def test_non_object_rejected(raw: Any) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        parse_metadata(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"vad_parms": VAD},
        {"vad_params": VAD, "extra": 1},
        {"vad_params": {**VAD, "thresold": 0.5}},
        {"streaming_vad_config": {"min_speech_duration_ms": 100}},
        {"streaming_params": {"sample_rate": 16000, "chunk_size": 512}},
        {"whisper_params": {"language": "en"}},
        {"streaming_whisper_params": {"sample_rate": 16000, "bogus": True}},
    ],
)
def test_unknown_keys_rejected_at_every_level(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_metadata(raw)


def test_unknown_key_error_names_the_path() -> None:
    with pytest.raises(ValueError, match=r"streaming_params\.chunk_size"):
        parse_metadata({"streaming_params": {"chunk_size": 512}})


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("vad_params", "threshold", 0.0),
        ("vad_params", "threshold", 1.0),
        ("vad_params", "threshold", -0.2),
        ("vad_params", "threshold", 1.5),
        ("vad_params", "min_silence_duration_ms", -5),
        ("vad_params", "min_silence_duration_ms", 0),
        ("vad_params", "speech_pad_ms", -1),
        ("streaming_params", "sample_rate", -16000),
        ("streaming_params", "sample_rate", 0),
        ("streaming_params", "sample_rate", 10_000_000),
        ("streaming_params", "final_transcript_max_duration_s", 30.5),
        ("streaming_params", "final_transcript_max_duration_s", 60),
        ("streaming_params", "final_transcript_max_duration_s", 0),
        ("streaming_params", "partial_transcript_interval_s", 0),
        ("streaming_params", "partial_transcript_interval_s", -1),
        ("whisper_params", "beam_width", 0),
        ("whisper_params", "no_repeat_ngram_size", -1),
    ],
)
def test_out_of_range_rejected(section: str, field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        parse_metadata({section: {field: value}})


def test_range_edges_accepted() -> None:
    cfg = parse_metadata(
        {
            "vad_params": {"threshold": 0.01, "speech_pad_ms": 0},
            "streaming_params": {"final_transcript_max_duration_s": 30},
        }
    )
    assert cfg.vad.threshold == 0.01 and cfg.streaming.final_transcript_max_duration_s == 30


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("vad_params", "threshold", "high"),
        ("vad_params", "threshold", None),
        ("vad_params", "min_silence_duration_ms", [300]),
        ("vad_params", "speech_pad_ms", 30.5),
        ("streaming_params", "sample_rate", "fast"),
        ("streaming_params", "sample_rate", {"hz": 16000}),
        ("streaming_params", "enable_partial_transcripts", "maybe"),
        ("streaming_params", "enable_partial_transcripts", 2),
        ("streaming_params", "encoding", 16),
        ("whisper_params", "prompt", 5),
        ("whisper_params", "language_options", "en"),
        ("whisper_params", "language_options", [1, 2]),
        ("whisper_params", "show_word_timestamps", []),
    ],
)
def test_wrong_types_rejected(section: str, field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        parse_metadata({section: {field: value}})


@pytest.mark.parametrize(
    "section",
    [
        "vad_params",
        "streaming_params",
        "whisper_params",
        "streaming_vad_config",
        "streaming_whisper_params",
    ],
)
def test_section_must_be_an_object(section: str) -> None:
    with pytest.raises(ValueError):
        parse_metadata({section: [1, 2]})


@pytest.mark.parametrize(
    "raw",
    [
        {"vad_params": VAD, "streaming_vad_config": VAD},
        {"streaming_whisper_params": {}, "streaming_params": {}},
        {"streaming_whisper_params": {}, "whisper_params": {}},
        {
            "vad_params": {},
            "streaming_whisper_params": {},
            "streaming_params": {},
            "whisper_params": {},
        },
    ],
)
def test_mixing_shapes_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_metadata(raw)


def test_prompt_length_limited() -> None:
    with pytest.raises(ValueError, match="prompt"):
        parse_metadata({"whisper_params": {"prompt": "x" * 10_000}})


# -- control messages ---------------------------------------------------------------------------
def test_control_messages() -> None:
    assert ControlMessage.model_validate_json('{"type": "end_audio"}').type == "end_audio"
    assert (
        ControlMessage.model_validate_json('{"type": "health_check", "body": {}}').type
        == "health_check"
    )
    for bad in ['{"type": "stop"}', "{}", "[]", "not json"]:
        with pytest.raises(ValueError):
            ControlMessage.model_validate_json(bad)


def test_end_audio_and_health_messages() -> None:
    assert end_audio_message("acknowledged") == {
        "type": "end_audio",
        "body": {"status": "acknowledged"},
    }
    assert end_audio_message("finished") == {"type": "end_audio", "body": {"status": "finished"}}
    assert health_message() == {"type": "health_check", "body": {"healthy": True}}


# -- transcription messages -----------------------------------------------------------------------
def _message(**kwargs: Any) -> TranscriptionMessage:
    base: dict[str, Any] = {
        "is_final": True,
        "transcript": "hello world",
        "transcription_num": 3,
        "language_code": "en",
        "language_prob": None,
        "audio_length_sec": 1.5,
        "segments": [SegmentOut(text="hello world", start_time=0.0, end_time=1.5)],
    }
    base.update(kwargs)
    return TranscriptionMessage(**base)


def test_to_json_always_has_language_prob_transcript_segments() -> None:
    data = _message().to_json()
    assert data == {
        "type": "transcription",
        "is_final": True,
        "transcript": "hello world",
        "transcription_num": 3,
        "language_code": "en",
        "language_prob": None,
        "audio_length_sec": 1.5,
        "segments": [{"text": "hello world", "start_time": 0.0, "end_time": 1.5, "log_prob": None}],
    }
    json.dumps(data)


def test_to_json_empty_transcript_and_segments_are_kept() -> None:
    data = _message(transcript="", segments=[], language_prob=0.93).to_json()
    assert data["transcript"] == "" and data["segments"] == [] and data["language_prob"] == 0.93


def test_to_json_flush_flag_only_when_set() -> None:
    assert "is_end_of_audio_flush" not in _message().to_json()
    assert _message(is_end_of_audio_flush=True).to_json()["is_end_of_audio_flush"] is True


def test_to_json_word_timestamps_only_when_present() -> None:
    seg = SegmentOut(
        text="hi",
        start_time=0.1,
        end_time=0.4,
        log_prob=-0.2,
        word_timestamps=[WordTimestamp(word="hi", start_time=0.1, end_time=0.4, prob=0.9)],
    )
    data = _message(segments=[seg, SegmentOut(text="x", start_time=1, end_time=2)]).to_json()
    first, second = data["segments"]
    assert first["word_timestamps"] == [
        {"word": "hi", "start_time": 0.1, "end_time": 0.4, "prob": 0.9}
    ]
    assert first["log_prob"] == -0.2
    assert "word_timestamps" not in second and second["log_prob"] is None
