"""The vendor dialects without sockets or engines: what Together's and Fish Audio's clients see
for the message sequences their real clients send (pipecat's, LiveKit's), and the HTTP
flavour's body recognition (orpheus_tts.http_speech.parse_request)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from orpheus_tts.audio_format import ENCODE_WORKER, run_encode_job
from orpheus_tts.codec_session import CodecSession
from orpheus_tts.dialects.fish import FishCodec, FishRequest
from orpheus_tts.dialects.together import TogetherCodec
from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
from orpheus_tts.protocol import TtsCore
from orpheus_tts.settings import SessionLimits
from speech_common.driver import Close, Send, StartStream, StreamChunk, StreamDone, Submit
from speech_common.ws import ProtocolError
from tests.test_orpheus_protocol import Params

PCM = b"\x01\x00" * 480  # one 20 ms chunk of the model's 24 kHz PCM


class Client:
    """The core behind a dialect's codec, driven like the driver does; the engine makes one
    chunk per generation when ``run`` is called, every send is written at once, and an encode
    job (an FFmpeg format) runs at once."""

    def __init__(self, make: Any) -> None:
        core = TtsCore(SessionLimits(), VOICES, DEFAULT_VOICE, Params(), lambda t, m: m, "s")
        self.dialect = CodecSession(core, make(core))
        self.out: list[Any] = []  # decoded frames, in order
        self.running: list[int] = []
        self.closed: Close | None = None
        self.apply(self.dialect.start(0.0))

    def apply(self, commands: list[Any]) -> None:
        for command in commands:
            if isinstance(command, StartStream):
                self.running.append(command.job_id)
            elif isinstance(command, Submit):  # an encode job (mp3, opus): run at once
                assert command.worker == ENCODE_WORKER
                result = run_encode_job(command.payload)
                self.apply(self.dialect.on_result(command.job_id, result, 0.0))
            elif isinstance(command, Send):
                self.out.append(self.decode(command.message))
                if command.ack is not None:
                    self.apply(self.dialect.on_sent(command.ack, 0.0))
            elif isinstance(command, Close):
                self.closed = command

    def decode(self, message: Any) -> Any:
        if isinstance(message, bytes):
            return msgpack.unpackb(message)
        return json.loads(message) if isinstance(message, str) else message

    def send(self, message: Any) -> None:
        if isinstance(message, dict) and "event" in message:
            self.apply(self.dialect.on_bytes(msgpack.packb(message), 0.0))
        else:
            self.apply(self.dialect.on_text(json.dumps(message), 0.0))

    def run(self) -> None:
        while self.running:
            job = self.running.pop(0)
            self.apply(self.dialect.on_result(job, StreamChunk(PCM), 0.0))
            self.apply(self.dialect.on_result(job, StreamDone(None), 0.0))

    def kinds(self, key: str = "type") -> list[str]:
        return [m[key] for m in self.out]


# -- Together ---------------------------------------------------------------------------------------
def together(query: dict | None = None) -> Client:
    return Client(lambda core: TogetherCodec(core, {"model": "orpheus", **(query or {})}))


def append(text: str) -> dict:
    return {"type": "input_text_buffer.append", "text": text}


COMMIT = {"type": "input_text_buffer.commit"}


def test_together_a_turn_of_sentence_commits_is_one_item_ended_by_the_empty_commit() -> None:
    """pipecat's TogetherTTSService: append + commit per sentence, an empty commit at the end
    of the LLM's turn; it ends its turn at the first ``.done``, so that comes once, last."""
    client = together()
    for sentence in ("One two.", "Three four.", "Five six."):
        client.send(append(sentence))
        client.send(COMMIT)
        client.run()
    assert "conversation.item.audio_output.done" not in client.kinds()
    client.send(COMMIT)
    client.run()
    deltas = [m for m in client.out if m["type"] == "conversation.item.audio_output.delta"]
    assert len(deltas) == 3 and {d["item_id"] for d in deltas} == {"tts_1"}
    assert client.out[-1] == {"type": "conversation.item.audio_output.done", "item_id": "tts_1"}
    client.send(append("Next turn."))
    client.send(COMMIT)
    client.send(COMMIT)
    client.run()
    assert client.out[-2]["item_id"] == "tts_2" and client.out[-1]["item_id"] == "tts_2"
    assert client.out[-1]["type"] == "conversation.item.audio_output.done"


def test_together_an_empty_commit_before_the_audio_is_out_still_ends_the_item_after_it() -> None:
    client = together()
    client.send(append("One. Two. Three."))
    client.send(COMMIT)
    client.send(COMMIT)  # the audio of the turn is still to come
    assert "conversation.item.audio_output.done" not in client.kinds()
    client.run()
    assert client.kinds().count("conversation.item.audio_output.done") == 1
    assert client.out[-1]["type"] == "conversation.item.audio_output.done"


def test_together_clear_drops_the_item_and_the_next_text_is_a_new_item() -> None:
    client = together()
    client.send(append("Interrupt me."))
    client.send(COMMIT)
    client.send({"type": "input_text_buffer.clear"})
    client.send(append("Second."))
    client.send(COMMIT)
    client.send(COMMIT)
    client.run()
    dones = [m["item_id"] for m in client.out if m["type"].endswith("audio_output.done")]
    deltas = {m["item_id"] for m in client.out if m["type"].endswith("audio_output.delta")}
    assert dones == ["tts_2"] and deltas == {"tts_2"}


def test_together_commits_of_nothing_end_no_item() -> None:
    client = together()
    client.send(COMMIT)
    client.send(COMMIT)
    assert client.kinds() == ["session.created"]


@pytest.mark.parametrize(("language", "ok"), [("en", True), ("en-us", True), ("fr", False)])
def test_together_language_query(language: str, ok: bool) -> None:
    client = together({"language": language})
    assert (client.closed is None) is ok
    if not ok:
        assert client.out[-1]["error"]["type"] == "unsupported" and client.closed.code == 1003


# -- Fish -------------------------------------------------------------------------------------------
LIVEKIT_START = {  # livekit-plugins-fishaudio 1.8.9's start request (its _build_tts_request)
    "text": "", "chunk_length": 100, "format": "mp3", "sample_rate": 32000, "mp3_bitrate": 64,
    "opus_bitrate": 64000, "references": [], "reference_id": "tara", "normalize": True,
    "latency": "balanced", "prosody": None, "top_p": 0.7, "temperature": 0.7,
    "features": ["quality-guard"],
}  # fmt: skip


def fish() -> Client:
    return Client(FishCodec)


def test_fish_livekit_turns_on_one_pooled_socket() -> None:
    """LiveKit's plugin: start (every key it sends), text per sentence, flush, stop; ``finish``
    after the turn's audio, the socket stays open, the next turn starts on it."""
    client = fish()
    for turn in range(2):
        client.send({"event": "start", "request": LIVEKIT_START})
        client.send({"event": "text", "text": f"Turn {turn}. "})
        client.send({"event": "flush"})
        client.send({"event": "stop"})
        client.run()
        assert client.out[-1]["event"] == "finish" and client.out[-1]["reason"] == "stop"
        assert client.closed is None
    assert client.kinds("event").count("audio") >= 2 and "error" not in client.kinds("event")
    config = client.dialect.core.config
    assert (config.response_format, config.sample_rate, config.bitrate_bps) == ("mp3", 32000, 64000)
    assert config.normalize_loudness  # Fish's default: prosody None


def test_fish_wav_turns_are_whole_files_and_time_counts_from_the_start() -> None:
    client = fish()
    for _ in range(2):
        client.send({"event": "start", "request": {"format": "wav", "sample_rate": 24000}})
        client.send({"event": "text", "text": "Hello. "})
        client.send({"event": "stop"})
        client.run()
    audio = [m for m in client.out if m["event"] == "audio"]
    pairs = zip(client.out, client.out[1:], strict=False)
    firsts = [audio[0]] + [a for p, a in pairs if p["event"] == "finish" and a["event"] == "audio"]
    assert [a["audio"][:4] for a in firsts] == [b"RIFF", b"RIFF"]
    assert all(a["time"] == 0 for a in audio)  # the harness's clock never moves


@pytest.mark.parametrize(
    ("request_", "error_type"),
    [({"references": [{"audio": b"RIFF", "text": "hi"}]}, "unsupported"),
     ({"prosody": {"speed": 1.3}}, "unsupported"),
     ({"reference_id": ["tara", "leo"]}, "unsupported"),
     ({"format": "flac"}, "unsupported"),
     ({"colour": "blue"}, "invalid_message")],
)  # fmt: skip
def test_fish_refusals(request_: dict, error_type: str) -> None:
    with pytest.raises(ProtocolError) as info:
        FishRequest.parse(request_).session_config(DEFAULT_VOICE)
    assert info.value.error_type == error_type


def test_fish_request_mapping() -> None:
    config = FishRequest.parse(
        {"format": "opus", "opus_bitrate": 32, "temperature": 0, "top_p": 0.9,
         "prosody": {"volume": -6, "normalize_loudness": False}, "max_new_tokens": 1024,
         "chunk_length": 200, "latency": "low", "condition_on_previous_chunks": None}
    ).session_config(DEFAULT_VOICE)  # fmt: skip
    assert config == {
        "events": True, "response_format": "opus", "sample_rate": 48000, "voice": DEFAULT_VOICE,
        "normalize_loudness": False, "volume_db": -6.0, "bitrate_bps": 32000,
        "temperature": 0.01, "top_p": 0.9, "max_tokens": 1024, "max_chunk_chars": 200,
    }  # fmt: skip
    assert FishRequest.parse({})._voice("tara") == "tara"
    livekit_default = {"reference_id": "933563129e564b19a115bedd57b7406a"}  # no voice chosen
    assert FishRequest.parse(livekit_default)._voice("tara") == "tara"
    assert FishRequest.parse({}).session_config("tara")["sample_rate"] == 44100  # mp3


def test_fish_a_new_start_cannot_change_the_stream() -> None:
    client = fish()
    client.send({"event": "start", "request": {"format": "pcm", "sample_rate": 24000}})
    client.send({"event": "start", "request": {"format": "pcm", "sample_rate": 16000}})
    assert client.out[-1]["event"] == "finish" and client.out[-1]["reason"] == "error"
    assert client.closed is not None and client.closed.code == 1003


# -- the HTTP flavour's bodies ------------------------------------------------------------------------
def test_http_bodies_are_recognised_by_their_text_key() -> None:
    from orpheus_tts.http_speech import (
        FishHttpRequest,
        PredictRequest,
        SpeechRequest,
        parse_request,
    )

    assert isinstance(parse_request(b'{"input": "Hi", "model": "orpheus"}'), SpeechRequest)
    livekit = {"prompt": "Hi", "voice": "tara", "temperature": 0.6, "language": "en"}
    predict = parse_request(json.dumps(livekit).encode())
    assert isinstance(predict, PredictRequest) and predict.media_type == "audio/wav"
    assert predict.session_config() == {"events": True, "voice": "tara", "temperature": 0.6}
    fish_body = msgpack.packb({"text": "Hi", "format": "mp3", "reference_id": "leo"})
    request = parse_request(fish_body, "application/msgpack")
    assert isinstance(request, FishHttpRequest) and request.media_type == "audio/mpeg"
    wav = parse_request(msgpack.packb({"text": "Hi", "format": "wav"}), "application/msgpack")
    assert wav.whole_wav and wav.session_config()["response_format"] == "wav"


@pytest.mark.parametrize(
    ("body", "content_type", "shape"),
    [(msgpack.packb({"text": "Hi"}), "application/json", "together"),  # not UTF-8 JSON
     (b"\x00\xff", "application/msgpack", "together"),
     (b"[1, 2]", "application/json", "together"),
     (b'{"words": "Hi"}', "application/json", "together"),
     (msgpack.packb({"text": "Hi", "references": [{"audio": b"x"}]}), "application/msgpack",
      "fish"),
     (msgpack.packb({"text": ""}), "application/msgpack", "fish"),
     (b'{"prompt": "Hi", "language": "de"}', "application/json", "together"),
     (b'{"prompt": "Hi", "top_k": 5}', "application/json", "together")],
)  # fmt: skip
def test_http_bad_bodies_are_typed_400s_in_the_vendors_shape(
    body: bytes, content_type: str, shape: str
) -> None:
    from orpheus_tts.http_speech import HttpError, parse_request

    with pytest.raises(HttpError) as info:
        parse_request(body, content_type)
    assert info.value.status == 400
    if shape == "fish":
        assert set(info.value.body) == {"status", "message", "reason"}
    else:
        assert set(info.value.body["error"]) == {"message", "type", "code"}
