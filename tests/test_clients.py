"""Client conformance: each vendor's real client library, unchanged but for its URL and key, against
the real Truss server (dummy weights). Each case is a script under tests/clients/ run by
``.venv-clients/bin/python`` (the libraries' own pins, `make venv-clients`); it hands back
result.json and audio files, judged here as a user hears them: audio for every sentence sent
(none cut off, each at least the shortest speech), in the asked format and rate (decoded by
PyAV, independently of the client), a clean end, no error; a barge-in aborts the generation and
leaves no stale audio. The audio is noise (random weights): never judged for voice quality."""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from scripts.bench.wer import wer
from scripts.clients.stt import frames_of, read_wav, stream, v1_metadata
from tests.test_orpheus_e2e import metric

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
CLIENTS = REPO / "tests" / "clients"
PYTHON = REPO / ".venv-clients" / "bin" / "python"
DOC = REPO / "docs" / "clients.md"
CASE_TIMEOUT_S = 180
MIN_GENERATION_S = 4 * 2048 / 24000  # the dummy model speaks at least 4 SNAC frames
SAMPLE = REPO / "samples" / "real" / "LJ001-0013.wav"


def run_client(script: str, case: str, url: str, out: Path, *extra: str) -> dict[str, Any]:
    """One client case in .venv-clients; its result.json (``error`` holds what it raised)."""
    assert PYTHON.exists(), "no .venv-clients: run `make venv-clients` (part of `make test`)"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(PYTHON), str(CLIENTS / script), case, "--url", url, "--out", str(out), *extra],
        cwd=CLIENTS, capture_output=True, text=True, timeout=CASE_TIMEOUT_S,
    )  # fmt: skip
    result_file = out / "result.json"
    assert proc.returncode == 0 and result_file.exists(), proc.stderr[-4000:]
    result = json.loads(result_file.read_text())
    result["stderr_tail"] = proc.stderr[-3000:]
    return result


def assert_ok(result: dict[str, Any]) -> None:
    assert result["ok"], (
        f"the client raised {result['error']}\n{result.get('traceback', '')}\n"
        f"client log tail:\n{result['stderr_tail']}"
    )


def decode(out: Path, audio: dict[str, Any]) -> tuple[float, int, int]:
    """(seconds, sample rate, channels) of one audio file, decoded by FFmpeg (PyAV)."""
    data = (out / audio["file"]).read_bytes()
    assert data, f"{audio['file']}: no audio at all"
    options = {}
    if audio["format"] == "s16le":
        assert len(data) % 2 == 0, "PCM s16le with an odd byte count"
        options = {"sample_rate": str(audio["sample_rate"]), "ch_layout": "mono"}
    with av.open(io.BytesIO(data), format=audio["format"], options=options) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / stream.rate, stream.rate, stream.channels


# -- the server's side: what it spoke, whether it aborted --------------------------------------------
def counters(text: str) -> dict[str, float]:
    aborted = sum(
        float(m[1]) for m in re.finditer(r"^orpheus_aborted_generations_total\{[^}]*\} (\S+)$", text, re.M)
    )  # fmt: skip
    return {
        "generations": metric(text, "orpheus_generations_total"),
        "aborted": aborted,
        "client_gone": metric(text, "orpheus_aborted_generations_total", reason="client_gone"),
    }


def idle(server: Any, within_s: float = 20) -> dict[str, float]:
    """The server's counters once no session and no generation is active (tests run one at a time)."""
    deadline = time.monotonic() + within_s
    while True:
        text = server.metrics_text()
        if (
            metric(text, "orpheus_active_sessions")
            == 0
            == metric(text, "orpheus_active_generations")
        ):
            return counters(text)
        assert time.monotonic() < deadline, "sessions or generations still active"
        time.sleep(0.05)


def assert_heard_everything(
    before: dict, after: dict, heard_s: float, sentences: int, generations: int | None = None
) -> None:
    """Every sentence was spoken to its end and heard: at least ``generations`` generations
    (default: one per sentence, for clients that flush each sentence), none aborted, and at
    least the dummy model's shortest speech per sentence reached the client."""
    started = after["generations"] - before["generations"]
    assert started >= (sentences if generations is None else generations), started
    assert after["aborted"] == before["aborted"], "a generation was aborted: speech cut off"
    assert heard_s >= sentences * MIN_GENERATION_S * 0.9, (heard_s, sentences)


def assert_aborted(before: dict, server: Any) -> None:
    after = idle(server)
    assert after["aborted"] > before["aborted"], "the generation was not aborted"


def assert_no_errors(result: dict[str, Any]) -> None:
    assert not result.get("errors"), result.get("errors")


# -- LiveKit Agents: livekit-plugins-baseten -----------------------------------------------------------
def test_livekit_baseten_stt_final_transcript(whisper_server: Any, tmp_path: Path) -> None:
    result = run_client("livekit_baseten.py", "stt", whisper_server.ws_url, tmp_path,
                        "--sample", str(SAMPLE))  # fmt: skip
    assert_ok(result)
    reference = json.loads(SAMPLE.with_suffix(".json").read_text())["text"]
    words = set(re.findall(r"[a-z']+", reference.lower()))
    heard = re.findall(r"[a-z']+", result["final"].lower())
    assert heard and len(words.intersection(heard)) >= 0.6 * len(words), result["final"]


def test_livekit_baseten_tts_websocket(orpheus_server: Any, tmp_path: Path) -> None:
    before = idle(orpheus_server)
    result = run_client("livekit_baseten.py", "tts-ws", orpheus_server.ws_url, tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    assert audio["rates"] == [24000] and audio["channels"] == [1]
    seconds, rate, _ = decode(tmp_path, audio)
    assert_heard_everything(before, idle(orpheus_server), seconds, sentences=3)
    assert result["events"][-1]["is_final"]  # the stream ended cleanly


def test_livekit_baseten_tts_close_aborts(orpheus_server: Any, tmp_path: Path) -> None:
    before = idle(orpheus_server)
    result = run_client("livekit_baseten.py", "tts-ws-abort", orpheus_server.ws_url, tmp_path)
    assert_ok(result)
    assert result["frames_after_close"] == 0
    assert_aborted(before, orpheus_server)


def test_livekit_baseten_tts_https_predict(orpheus_http_server: Any, tmp_path: Path) -> None:
    before = idle(orpheus_http_server)
    url = f"{orpheus_http_server.http_url}/v1/models/model:predict"
    result = run_client("livekit_baseten.py", "tts-http", url, tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    assert audio["rates"] == [24000] and audio["channels"] == [1]
    seconds, _, _ = decode(tmp_path, audio)
    assert_heard_everything(before, idle(orpheus_http_server), seconds, 3, generations=1)


# -- LiveKit Agents: livekit-plugins-fishaudio (Fish's live WebSocket) ---------------------------------
def fish_base_url(server: Any) -> str:
    return f"{server.http_url}/v1/websocket?_p="


@pytest.mark.parametrize("case", ["default", "mp3", "pcm"])
def test_livekit_fishaudio_stream(orpheus_server: Any, tmp_path: Path, case: str) -> None:
    before = idle(orpheus_server)
    result = run_client("livekit_fish.py", case, fish_base_url(orpheus_server), tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    # LiveKit decodes the stream itself: its frames must come at the rate it asked for.
    assert audio["rates"] == [result["asked"]["sample_rate"]] and audio["channels"] == [1]
    seconds, _, _ = decode(tmp_path, audio)
    assert_heard_everything(before, idle(orpheus_server), seconds, sentences=3)


def test_livekit_fishaudio_close_aborts(orpheus_server: Any, tmp_path: Path) -> None:
    before = idle(orpheus_server)
    result = run_client("livekit_fish.py", "abort", fish_base_url(orpheus_server), tmp_path)
    assert_ok(result)
    assert result["frames_after_close"] == 0
    assert_aborted(before, orpheus_server)


# -- Pipecat: FishAudioTTSService, TogetherTTSService -------------------------------------------------
@pytest.mark.parametrize("service", ["fish", "together"])
def test_pipecat_three_sentence_reply(orpheus_server: Any, tmp_path: Path, service: str) -> None:
    before = idle(orpheus_server)
    result = run_client("pipecat_tts.py", f"{service}-reply", orpheus_server.ws_url, tmp_path)
    assert_ok(result)
    assert_no_errors(result)
    assert result["rates"] == [24000]
    heard = sum(decode(tmp_path, audio)[0] for audio in result["audio"])
    assert_heard_everything(before, idle(orpheus_server), heard, sentences=3)
    kinds = [e["kind"] for e in result["events"]]
    assert kinds[-1] == "LLMFullResponseEndFrame" and "TTSStoppedFrame" in kinds


@pytest.mark.parametrize("service", ["fish", "together"])
def test_pipecat_interruption_leaves_no_stale_audio(
    orpheus_server: Any, tmp_path: Path, service: str
) -> None:
    before = idle(orpheus_server)
    result = run_client("pipecat_tts.py", f"{service}-interrupt", orpheus_server.ws_url, tmp_path)
    assert_ok(result)
    assert_no_errors(result)
    events = result["events"]
    cut = next(i for i, e in enumerate(events) if e["kind"] == "InterruptionFrame")
    audio = [(i, e["context_id"]) for i, e in enumerate(events) if e["kind"] == "TTSAudioRawFrame"]
    old = {context for i, context in audio if i < cut}
    new = {context for i, context in audio if i > cut}
    assert old, "no audio played before the interruption: nothing was barged in on"
    assert not old & new, "audio of the interrupted reply played after the interruption"
    assert new and None not in new, "the reply after the interruption got no audio"
    stops = [e["context_id"] for e in events[cut:] if e["kind"] == "TTSStoppedFrame"]
    assert new <= set(stops), "the reply after the interruption did not end"
    after = idle(orpheus_server)
    assert after["generations"] - before["generations"] >= 2
    assert after["aborted"] > before["aborted"], "the interrupted generation ran on"


# -- Fish Audio's SDK (fish-audio-sdk) ------------------------------------------------------------------
@pytest.mark.parametrize(("case", "rate"), [("ws-sync", None), ("ws-async", 16000)])
def test_fish_sdk_websocket(orpheus_server: Any, tmp_path: Path, case: str, rate: int | None):
    before = idle(orpheus_server)
    result = run_client("fish_sdk.py", case, fish_base_url(orpheus_server), tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    seconds, got_rate, channels = decode(tmp_path, audio)
    assert channels == 1 and (rate is None or got_rate == rate)
    assert_heard_everything(before, idle(orpheus_server), seconds, sentences=3)


@pytest.mark.parametrize("case", ["http-convert", "http-legacy"])
def test_fish_sdk_http(orpheus_http_server: Any, tmp_path: Path, case: str) -> None:
    before = idle(orpheus_http_server)
    url = f"{orpheus_http_server.http_url}/v1/models/model:predict?_p="
    result = run_client("fish_sdk.py", case, url, tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    seconds, _, channels = decode(tmp_path, audio)
    assert channels == 1
    assert_heard_everything(before, idle(orpheus_http_server), seconds, 3, generations=1)


# -- Together's SDK (together) --------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["file", "stream"])
def test_together_sdk_speech(orpheus_http_server: Any, tmp_path: Path, case: str) -> None:
    before = idle(orpheus_http_server)
    url = f"{orpheus_http_server.http_url}/v1/models/model:predict?_p="
    result = run_client("together_sdk.py", case, url, tmp_path)
    assert_ok(result)
    (audio,) = result["audio"]
    seconds, rate, channels = decode(tmp_path, audio)
    assert (rate, channels) == (24000, 1)
    assert_heard_everything(before, idle(orpheus_http_server), seconds, 3, generations=1)


# -- Deepgram's clients: livekit-plugins-deepgram, pipecat's DeepgramSTTService ------------------------
DEEPGRAM_SAMPLE = REPO / "samples" / "real" / "LJ001-0009.wav"  # two utterances, 7.5 s


def own_client_transcript(server: Any, sample: Path) -> str:
    """Our own client (scripts/clients/stt.py, Baseten's protocol) on the same clip and silence."""
    audio = read_wav(sample)
    audio = np.concatenate([audio, np.zeros(24000, audio.dtype)])  # 1.5 s of silence
    result = asyncio.run(
        stream(server.ws_url, frames_of(audio), v1_metadata(), frame_s=0.032, realtime=False)
    )
    assert result.finished, result.errors
    return result.transcript


@pytest.mark.parametrize("client", ["livekit", "pipecat"])
def test_deepgram_clients_transcribe_real_speech(
    whisper_server: Any, tmp_path: Path, client: str
) -> None:
    """Real speech at real-time pace through each Deepgram client: finals as good as our own
    client's on the same clip, the events each one asks for, a clean end."""
    url = whisper_server.ws_url if client == "livekit" else f"{whisper_server.ws_url}?_p="
    result = run_client("deepgram_stt.py", client, url, tmp_path, "--sample", str(DEEPGRAM_SAMPLE))
    assert_ok(result)
    assert_no_errors(result)
    reference = json.loads(DEEPGRAM_SAMPLE.with_suffix(".json").read_text())["text"]
    heard = " ".join(result["finals"])
    own = own_client_transcript(whisper_server, DEEPGRAM_SAMPLE)
    assert wer(reference, heard) <= wer(reference, own) + 0.05, (heard, own)
    assert wer(reference, heard) <= 0.15, heard
    kinds = [e["type"] for e in result["events"]]
    if client == "livekit":
        # vad_events (SpeechStarted) and speech_final, interim results, in a turn's order.
        assert kinds[0] == "start_of_speech" and kinds[-1] == "end_of_speech", kinds
        assert "interim_transcript" in kinds
        for i, kind in enumerate(kinds):
            if kind == "final_transcript":
                assert kinds[i + 1] == "end_of_speech" and "start_of_speech" in kinds[:i]
    else:
        assert "InterimTranscriptionFrame" in kinds
        finals = [e for e in result["events"] if e["type"] == "TranscriptionFrame"]
        # pipecat's Finalize cut the last utterance: its final came back from_finalize.
        assert finals[-1]["finalized"] and not any(f["finalized"] for f in finals[:-1])


# -- Deepgram Flux's clients: livekit-plugins-deepgram's STTv2, pipecat's DeepgramFluxSTTService -----------
@pytest.mark.parametrize("client", ["livekit", "pipecat", "sdk"])
def test_flux_clients_get_one_turn_of_real_speech(
    whisper_server: Any, tmp_path: Path, client: str
) -> None:
    """Real speech at real-time pace through each Flux client (two utterances, one turn): the
    turn's final within 5 WER points of our own client's transcript of the clip, after its
    interims, and the turn's start and end in order; a clean end. The SDK ends the turn by hand
    (ForceEndTurn) and sends a Configure."""
    url = whisper_server.ws_url if client == "livekit" else f"{whisper_server.ws_url}?_p="
    result = run_client("deepgram_flux.py", client, url, tmp_path, "--sample", str(DEEPGRAM_SAMPLE))
    assert_ok(result)
    assert_no_errors(result)
    reference = json.loads(DEEPGRAM_SAMPLE.with_suffix(".json").read_text())["text"]
    (final,) = result["finals"]  # the clip's two utterances are one turn
    own = own_client_transcript(whisper_server, DEEPGRAM_SAMPLE)
    assert wer(reference, final) <= wer(reference, own) + 0.05, (final, own)
    assert wer(reference, final) <= 0.15, final
    kinds = [e["type"] for e in result["events"]]
    if client == "livekit":
        # StartOfTurn, Updates, EndOfTurn: LiveKit's START_OF_SPEECH, interims, FINAL, END_OF_SPEECH.
        assert kinds[0] == "start_of_speech" and kinds[-2:] == ["final_transcript", "end_of_speech"]
        assert "interim_transcript" in kinds
    elif client == "sdk":
        events = [e["event"] for e in result["events"] if e["type"] == "TurnInfo"]
        assert kinds[0] == "Connected" and "ConfigureSuccess" in kinds, kinds
        assert events[0] == "StartOfTurn" and events[-1] == "EndOfTurn", events
        assert result["events"][-1]["trigger"] == "manual"  # ForceEndTurn ended it
    else:
        assert kinds[0] == "InterimTranscriptionFrame" and kinds[-1] == "TranscriptionFrame", kinds
        assert result["events"][-1]["finalized"]


# -- docs/clients.md shows exactly the suite's lines -----------------------------------------------------
REGION = re.compile(
    r"^[ \t]*# --- docs:(?P<name>[\w-]+) ---\n(?P<body>.*?)^[ \t]*# --- end ---$", re.M | re.S
)
DOC_BLOCK = re.compile(r"^<!-- (?P<path>tests/clients/[\w.]+)#(?P<name>[\w-]+) -->\n```python\n(?P<body>.*?)^```$", re.M | re.S)  # fmt: skip


def test_docs_snippets_are_the_suites_code() -> None:
    """Every ``# --- docs:<name> ---`` region of a client script is a block of docs/clients.md,
    verbatim (dedented), and every block there is one: the docs run in CI, so they cannot drift."""
    regions = {
        (f"tests/clients/{path.name}", m["name"]): textwrap.dedent(m["body"])
        for path in sorted(CLIENTS.glob("*.py"))
        for m in REGION.finditer(path.read_text())
    }
    blocks = {(m["path"], m["name"]): m["body"] for m in DOC_BLOCK.finditer(DOC.read_text())}
    assert regions and set(blocks) == set(regions)
    for key, body in regions.items():
        assert blocks[key] == body, f"docs/clients.md's {key} differs from the script"
