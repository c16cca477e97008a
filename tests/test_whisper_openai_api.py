"""The HTTP flavour's request and answer (whisper_streaming.openai_api) and its file pipeline
(whisper_streaming.file_transcription): OpenAI's multipart form parsed as the openai SDK writes
it, each parameter checked, every response_format written as OpenAI writes it (srt/vtt timing
to the millisecond), files of any container decoded, chunked by VAD and mapped back to file
times; a file through the real scheduler and tiny.en (no server: tests/test_whisper_http_e2e.py
goes through Truss)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import soxr

from whisper_streaming.file_transcription import (
    FILE_VAD,
    MAX_CHUNK_S,
    AudioTooLong,
    AudioTooShort,
    FileOptions,
    FileTranscript,
    Piece,
    SpeechChunker,
    TimedSegment,
    TimedWord,
    TimeMap,
    UndecodableAudio,
    decode_blocks,
    transcribe_file,
)
from whisper_streaming.openai_api import (
    ApiError,
    TranscriptionRequest,
    bare_word,
    format_timestamp,
    parse_multipart,
    parse_request,
    render,
    to_srt,
    to_vtt,
)

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "samples" / "real"
BOUNDARY = "70c518b94caebffd158a4234368242a4"
EN = ["en"]


def multipart(fields: list[tuple[str, str]], file: tuple[str, bytes] | None = None) -> bytes:
    """A body as the openai SDK (httpx) writes it: text fields, then the file part."""
    out = b""
    for name, value in fields:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file is not None:
        filename, data = file
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\nContent-Type: audio/x-wav\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def request(*fields: tuple[str, str], data: bytes = b"RIFF....", **kwargs) -> TranscriptionRequest:
    body = multipart([("model", "whisper-1"), *fields], ("a.wav", data))
    return parse_request(body, CONTENT_TYPE, kwargs.pop("languages", EN), **kwargs)


def refusal(*fields: tuple[str, str], **kwargs) -> ApiError:
    with pytest.raises(ApiError) as info:
        request(*fields, **kwargs)
    body = info.value.body()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return info.value


# -- the form -----------------------------------------------------------------------------------
def test_multipart_as_the_sdk_writes_it() -> None:
    audio = b"\x00\r\n--notaboundary\r\n\xff" * 100  # binary that looks like a delimiter
    body = multipart([("model", "whisper-1"), ("timestamp_granularities[]", "word"),
                      ("timestamp_granularities[]", "segment")], ("speech.wav", audio))  # fmt: skip
    parts = parse_multipart(body, CONTENT_TYPE)
    assert [p.name for p in parts] == ["model", *["timestamp_granularities[]"] * 2, "file"]
    assert bytes(parts[-1].data) == audio and parts[-1].filename == "speech.wav"
    assert parts[-1].content_type == "audio/x-wav" and bytes(parts[0].data) == b"whisper-1"
    quoted = parse_multipart(b"preamble\r\n" + body, f'multipart/form-data; boundary="{BOUNDARY}"')
    assert [bytes(p.data) for p in quoted] == [bytes(p.data) for p in parts]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{}", "application/json"), (b"x", ""), (b"x", "multipart/form-data"),
     (b"no delimiter", CONTENT_TYPE),
     (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated".encode(),
      CONTENT_TYPE),
     (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
      CONTENT_TYPE)],
)  # fmt: skip
def test_what_is_no_form_is_a_400(body: bytes, content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_multipart(body, content_type)
    assert info.value.status == 400


def test_defaults() -> None:
    r = request()
    assert (r.model, r.language, r.prompt, r.temperature) == ("whisper-1", None, "", 0.0)
    assert (r.response_format, r.stream, r.words, r.segments) == ("json", False, False, True)
    assert bytes(r.file) == b"RIFF...." and r.filename == "a.wav"


def test_parameters() -> None:
    r = request(("language", "EN"), ("prompt", "Baseten, Truss."), ("temperature", "0.4"),
                ("response_format", "verbose_json"), ("timestamp_granularities[]", "word"),
                ("chunking_strategy", "auto"), ("stream", "false"))  # fmt: skip
    assert (r.language, r.prompt, r.temperature) == ("en", "Baseten, Truss.", 0.4)
    assert r.words and not r.segments  # only word granularity: no segments (OpenAI's rule)
    both = request(("response_format", "verbose_json"), ("timestamp_granularities[]", "word"),
                   ("timestamp_granularities[]", "segment"))  # fmt: skip
    assert both.words and both.segments
    assert request(("response_format", "srt"), ("timestamp_granularities[]", "segment")).segments
    assert request(("stream", "true")).stream


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [((("language", "fr"),), "language", "invalid_value"),  # a valid code this model lacks
     ((("language", "english"),), "language", "invalid_value"),
     ((("temperature", "1.5"),), "temperature", "invalid_value"),
     ((("temperature", "hot"),), "temperature", "invalid_value"),
     ((("response_format", "xml"),), "response_format", "invalid_value"),
     ((("response_format", "diarized_json"),), "response_format", "invalid_value"),
     ((("timestamp_granularities[]", "word"),), "timestamp_granularities", "invalid_value"),
     ((("response_format", "verbose_json"), ("timestamp_granularities[]", "char")),
      "timestamp_granularities", "invalid_value"),
     ((("include[]", "logprobs"),), "include", "invalid_value"),
     ((("stream", "true"), ("response_format", "srt")), "stream", "invalid_value"),
     ((("stream", "maybe"),), "stream", "invalid_value")],
)  # fmt: skip
def test_bad_parameters_are_400_naming_the_parameter(fields, param: str, code: str) -> None:
    error = refusal(*fields)
    assert (error.status, error.param, error.code) == (400, param, code)


def test_missing_file_or_model_and_size_limits() -> None:
    body = multipart([("model", "whisper-1")])
    with pytest.raises(ApiError) as info:
        parse_request(body, CONTENT_TYPE, EN)
    assert (info.value.param, info.value.code) == ("file", "missing_required_parameter")
    body = multipart([], ("a.wav", b"RIFF"))
    with pytest.raises(ApiError) as info:
        parse_request(body, CONTENT_TYPE, EN)
    assert (info.value.param, info.value.code) == ("model", "missing_required_parameter")
    assert refusal(data=b"").param == "file"  # an empty file: nothing to decode
    too_big = refusal(data=b"x" * 2049, max_file_bytes=2048)
    assert (too_big.status, too_big.param) == (413, "file")
    assert request(("language", "de"), languages=["en", "de"]).language == "de"


# -- the answer ---------------------------------------------------------------------------------
def segment(start: float, end: float, text: str, words=()) -> TimedSegment:
    return TimedSegment(seek=round(start * 100), start=start, end=end, text=text,
                        tokens=[50363, 11, 50500], temperature=0.0, avg_logprob=-0.25,
                        compression_ratio=1.2, no_speech_prob=0.01,
                        words=[TimedWord(*w) for w in words])  # fmt: skip


TRANSCRIPT = FileTranscript(
    [segment(0.0, 7.748, "And so, my fellow Americans,", [("And", 0.0, 0.5), ("so,", 0.5, 0.9),
             ("my", 1.1, 1.3), ("fellow", 1.3, 1.6), ("Americans,", 1.6, 2.34)]),
     segment(3661.0015, 3663.9995, "ask not --> what.", [("ask", 3661.0, 3661.4),
             ("not", 3661.4, 3661.9), ("-->", 3662.0, 3662.1), ("what.", 3662.2, 3663.0)])],
    duration_s=3664.2,
    language="en",
)  # fmt: skip


def test_timestamps_as_whispers_writers_round_them() -> None:
    assert format_timestamp(0.0, ",") == "00:00:00,000"
    assert format_timestamp(7.748, ".") == "00:00:07.748"
    assert format_timestamp(59.9996, ",") == "00:01:00,000"  # rounded to the millisecond
    assert format_timestamp(3661.0015, ",") == "01:01:01,002"
    assert format_timestamp(36000.25, ".") == "10:00:00.250"
    assert format_timestamp(-0.01, ",") == "00:00:00,000"


def test_srt_and_vtt_exactly() -> None:
    assert to_srt(TRANSCRIPT.segments) == (
        "1\n00:00:00,000 --> 00:00:07,748\nAnd so, my fellow Americans,\n\n"
        "2\n01:01:01,002 --> 01:01:04,000\nask not -> what.\n\n"
    )
    assert to_vtt(TRANSCRIPT.segments) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:07.748\nAnd so, my fellow Americans,\n\n"
        "01:01:01.002 --> 01:01:04.000\nask not -> what.\n\n"
    )
    assert to_srt([]) == "" and to_vtt([]) == "WEBVTT\n\n"


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats_are_plain_text(fmt: str) -> None:
    body, media_type = render(request(("response_format", fmt)), TRANSCRIPT)
    assert media_type == "text/plain; charset=utf-8"
    if fmt == "text":
        assert body == b"And so, my fellow Americans, ask not --> what.\n"


def test_json_is_text_and_usage_in_whole_seconds() -> None:
    body, media_type = render(request(), TRANSCRIPT)
    assert media_type == "application/json"
    assert json.loads(body) == {
        "text": "And so, my fellow Americans, ask not --> what.",
        "usage": {"type": "duration", "seconds": 3665},
    }


@pytest.mark.parametrize(
    ("granularities", "keys"),
    [((), {"segments"}), (("segment",), {"segments"}), (("word",), {"words"}),
     (("word", "segment"), {"segments", "words"})],
)  # fmt: skip
def test_verbose_json_as_openai_answers_each_granularity(granularities, keys) -> None:
    fields = [("timestamp_granularities[]", g) for g in granularities]
    body, _ = render(request(("response_format", "verbose_json"), *fields), TRANSCRIPT)
    answer = json.loads(body)
    base = {"task", "language", "duration", "text", "usage"}
    assert set(answer) == base | keys
    assert (answer["task"], answer["language"], answer["duration"]) == ("transcribe", "english",
                                                                         3664.2)  # fmt: skip
    if "segments" in keys:
        first = answer["segments"][0]
        assert set(first) == {"id", "seek", "start", "end", "text", "tokens", "temperature",
                              "avg_logprob", "compression_ratio", "no_speech_prob"}  # fmt: skip
        assert [s["id"] for s in answer["segments"]] == [0, 1]
        assert first["text"] == " And so, my fellow Americans,"  # Whisper's leading space
        assert (first["start"], first["end"], first["seek"]) == (0.0, 7.748, 0)
    if "words" in keys:
        words = answer["words"]
        assert [w["word"] for w in words] == ["And", "so", "my", "fellow", "Americans", "ask",
                                              "not", "what"]  # fmt: skip
        assert words[1] == {"word": "so", "start": 0.5, "end": 0.9}


def test_words_lose_only_their_outer_punctuation() -> None:
    assert [bare_word(w) for w in ("Americans,", '"Hello!"', "don't", "U.S.", "¿qué?", "--")] == [
        "Americans", "Hello", "don't", "U.S", "qué", ""]  # fmt: skip


# -- decoding files -----------------------------------------------------------------------------
def real_pcm(name: str) -> np.ndarray:
    with wave.open(str(REAL / f"{name}.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def encode(audio16k: np.ndarray, fmt: str, codec: str, rate: int, layout: str = "mono") -> bytes:
    """``audio16k`` encoded by FFmpeg (PyAV) at ``rate`` in ``fmt``."""
    buf = io.BytesIO()
    x = soxr.resample(audio16k, 16000, rate).astype(np.float32)
    channels = 2 if layout == "stereo" else 1
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.tile(x, (channels, 1)), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return real_pcm("jfk-inaugural")


@pytest.mark.parametrize(
    ("fmt", "codec", "rate", "layout"),
    [("wav", "pcm_s16le", 44100, "stereo"), ("mp3", "libmp3lame", 22050, "mono"),
     ("ogg", "libopus", 48000, "stereo"), ("ipod", "aac", 44100, "mono"),
     ("flac", "flac", 8000, "mono"), ("webm", "libopus", 48000, "mono")],
)  # fmt: skip
def test_any_container_and_codec_decodes_to_16k_mono(jfk, fmt, codec, rate, layout) -> None:
    data = encode(jfk, fmt, codec, rate, layout)
    blocks = list(decode_blocks(data, block_samples=16000))
    assert all(len(b) == 16000 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 16000
    audio = np.concatenate(blocks)
    assert audio.dtype == np.float32 and np.abs(audio).max() <= 1.0
    # Codec delay and padding: within 100 ms of the source's 11 s.
    assert abs(len(audio) / 16000 - len(jfk) / 16000) < 0.1, len(audio) / 16000
    loud = slice(16000, 16000 * 10)
    assert 0.5 < np.std(audio[loud]) / np.std(jfk[loud]) < 2  # the level is kept


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is text and no audio",
        bytes(range(256)) * 400,
        (REPO / "README.md").read_bytes(),
    ],
)
def test_what_ffmpeg_cannot_decode_is_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableAudio):
        list(decode_blocks(data))


def test_a_video_without_audio_is_undecodable() -> None:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(UndecodableAudio, match="no audio stream"):
        list(decode_blocks(buf.getvalue()))


def test_limits_and_a_truncated_file(jfk) -> None:
    mp3 = encode(jfk, "mp3", "libmp3lame", 16000)
    with pytest.raises(AudioTooLong):
        list(decode_blocks(mp3, max_audio_s=5.0))
    cut = np.concatenate(list(decode_blocks(mp3[: len(mp3) // 3])))  # an upload cut short
    assert 2.0 < len(cut) / 16000 < 6.0


@pytest.mark.parametrize(("fmt", "codec", "rate"), [("mp3", "libmp3lame", 44100),
                                                     ("ipod", "aac", 44100), ("flac", "flac", 16000)])  # fmt: skip
def test_a_corrupt_stretch_costs_only_its_packets(jfk, fmt: str, codec: str, rate: int) -> None:
    data = bytearray(encode(jfk, fmt, codec, rate))
    middle = len(data) // 2
    data[middle : middle + 300] = bytes(300)  # a damaged stretch mid-file
    audio = np.concatenate(list(decode_blocks(bytes(data))))
    assert len(audio) / 16000 > 10.5  # of 11 s: the rest of the file is still there


# -- chunking and file times --------------------------------------------------------------------
def test_time_map_joins_pieces_and_maps_back() -> None:
    pieces = [Piece(10.0, np.zeros(16000)), Piece(100.0, np.zeros(8000)),
              Piece(200.0, np.zeros(16000))]  # fmt: skip
    times = TimeMap(pieces)
    assert times.duration_s == 2.5
    assert [times.to_file(t) for t in (0.0, 0.25, 1.0, 1.25, 2.5, 9.0)] == [
        10.0, 10.25, 100.0, 100.25, 201.0, 201.0]  # fmt: skip
    assert times.to_file(1.0, end=True) == 11.0  # a segment ending on the seam ends piece one
    assert times.to_file(1.5, end=True) == 100.5


def test_chunker_joins_utterances_up_to_a_whisper_window() -> None:
    """Speech bursts of 4 s with 2 s pauses: utterances padded by FILE_VAD's pad, joined into
    chunks of at most MAX_CHUNK_S, pauses left out, every burst in exactly one chunk."""
    chunker = SpeechChunker()
    window = np.zeros(512, np.float32)
    probs = ([0.9] * 125 + [0.05] * 63) * 12 + [0.05] * 30  # 12 x (4.0 s speech, 2.0 s pause)
    chunks = [c for p in probs for c in chunker.push(window, p)] + chunker.flush()
    pieces = [p for c in chunks for p in c.pieces]
    assert len(pieces) == 12
    assert all(c.times.duration_s <= MAX_CHUNK_S for c in chunks) and len(chunks) == 2
    pad = FILE_VAD.speech_pad_ms / 1000
    for i, piece in enumerate(pieces):
        burst = i * 188 * 512 / 16000
        assert abs(piece.file_start_s - (max(burst - pad, 0.0))) < 0.04, (i, piece.file_start_s)
        assert 4.0 <= piece.duration_s <= 4.0 + 2 * pad + 0.04


def test_a_click_is_no_utterance() -> None:
    chunker = SpeechChunker()
    window = np.zeros(512, np.float32)
    probs = [0.05] * 50 + [0.9] * 3 + [0.05] * 50  # 96 ms of "speech"
    assert not [c for p in probs for c in chunker.push(window, p)] + chunker.flush()


# -- a file on the real scheduler (tiny.en) -----------------------------------------------------
@pytest.fixture(scope="module")
def scheduler():
    from faster_whisper import WhisperModel

    from scripts.local.serve import embedded_whisper_dir
    from speech_common.vad import SileroVad
    from whisper_streaming.engine import WhisperEngine
    from whisper_streaming.scheduler import Scheduler

    model = WhisperModel(embedded_whisper_dir(), device="cpu", compute_type="int8", cpu_threads=1)
    engine = WhisperEngine(model, encoder_context_s=10.0)
    scheduler = Scheduler(engine, SileroVad(), max_batch=16, vad_max_batch=64).start()
    yield scheduler
    scheduler.stop()


def _wav(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def test_a_file_with_a_long_silence_keeps_its_times(scheduler) -> None:
    """Two clips 40 s apart: the silence is left out of the chunk, the second clip's words are
    timed where they are in the file, the text is the clips' text."""
    from tests.whisper_helpers import wer

    first, second = real_pcm("jfk-inaugural"), real_pcm("LJ001-0013")
    gap = np.zeros(40 * 16000, np.float32)
    audio = np.concatenate([first, gap, second])
    options = FileOptions(language=None, word_timestamps=True, beam_size=5)
    transcript = asyncio.run(transcribe_file(scheduler, _wav(audio), options, "t1"))
    assert transcript.duration_s == len(audio) / 16000 and transcript.language == "en"
    references = [json.loads((REAL / f"{n}.json").read_text())["text"]
                  for n in ("jfk-inaugural", "LJ001-0013")]  # fmt: skip
    assert wer(" ".join(references), transcript.text) < 0.15, transcript.text
    second_start = (len(first) + len(gap)) / 16000
    late = [s for s in transcript.segments if s.start >= second_start - 0.5]
    early = [s for s in transcript.segments if s.end <= len(first) / 16000 + 0.5]
    assert late and early and len(late) + len(early) == len(transcript.segments)
    words = [w for s in transcript.segments for w in s.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:], strict=False))
    assert second_start - 0.5 <= [w for s in late for w in s.words][0].start < second_start + 1
    assert all(s.tokens and s.seek >= 0 for s in transcript.segments)


def test_silence_is_an_empty_transcript_and_a_blip_too_short(scheduler) -> None:
    quiet = asyncio.run(transcribe_file(scheduler, _wav(np.zeros(32000)), FileOptions("en"), "t2"))
    assert (quiet.text, quiet.segments, quiet.duration_s) == ("", [], 2.0)
    with pytest.raises(AudioTooShort):
        asyncio.run(transcribe_file(scheduler, _wav(np.zeros(800)), FileOptions("en"), "t3"))


def test_sampling_temperature_is_reported(scheduler) -> None:
    """OpenAI's ``temperature``: the first decode samples at it (never a beam, never colder),
    and finals of different temperatures never share a batch."""
    from whisper_streaming.engine import DecodeOptions, JobKind, TranscribeJob

    options = FileOptions("en", temperature=0.6)
    transcript = asyncio.run(
        transcribe_file(scheduler, _wav(real_pcm("LJ001-0013")), options, "t4")
    )
    assert transcript.segments and all(s.temperature >= 0.6 for s in transcript.segments)
    engine, audio = scheduler.engine, np.zeros(16000, np.float32)
    keys = {
        engine.batch_key(TranscribeJob(JobKind.FINAL, audio, DecodeOptions("en", temperature=t)))
        for t in (0.0, 0.6)
    }
    assert len(keys) == 2


def test_requests_leave_nothing_queued(scheduler) -> None:
    audio = _wav(np.concatenate([real_pcm("LJ001-0013")] * 2))
    results = asyncio.run(_many(scheduler, audio, 3))
    assert len({r.text for r in results}) == 1  # batched or alone, the same text
    assert scheduler.whisper.queue_depth == 0 and scheduler.vad.queue_depth == 0
    assert math.isclose(results[0].duration_s, 2 * len(real_pcm("LJ001-0013")) / 16000)


async def _many(scheduler, audio: bytes, n: int) -> list[FileTranscript]:
    return await asyncio.gather(
        *(transcribe_file(scheduler, audio, FileOptions("en"), f"m{i}") for i in range(n))
    )


@pytest.mark.slow
def test_a_multilingual_model_detects_the_language_once(tmp_path: Path) -> None:
    """No language asked: it is detected from the first chunk and every chunk is decoded in it;
    verbose_json names it as OpenAI does ("german")."""
    from faster_whisper import WhisperModel

    from speech_common.vad import SileroVad
    from tests.whisper_helpers import whisper_base_dir
    from whisper_streaming.engine import WhisperEngine
    from whisper_streaming.scheduler import Scheduler

    model = WhisperModel(str(whisper_base_dir(tmp_path)), device="cpu", compute_type="int8")
    scheduler = Scheduler(WhisperEngine(model, 10.0), SileroVad(), max_batch=8, vad_max_batch=8)
    scheduler.start()
    try:
        lang = REPO / "samples" / "lang_real"  # real German speech (espeak's fools base)
        clips = []
        for name in ("de_cheetah", "de_leopard"):
            with wave.open(str(lang / f"{name}.wav")) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
                clips += [soxr.resample(pcm, w.getframerate(), 16000), np.zeros(16000)]
        data = _wav(np.concatenate(clips))
        transcript = asyncio.run(transcribe_file(scheduler, data, FileOptions(None), "de"))
    finally:
        scheduler.stop()
    assert transcript.language == "de" and transcript.text
    verbose = request(("response_format", "verbose_json"), languages=["en", "de"])
    assert json.loads(render(verbose, transcript)[0])["language"] == "german"
