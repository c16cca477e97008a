"""The STT dialects through the real Truss server over a real WebSocket (tiny.en on CPU): Deepgram's
live protocol spoken by hand (its frames and close codes as a client reads them), and Baseten's
protocol with its opt-in events. The vendor clients themselves run in tests/test_clients.py."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
import websockets

from scripts.clients.stt import frames_of, v1_metadata
from tests.whisper_helpers import sample, wer

pytestmark = pytest.mark.e2e

SILENCE = np.zeros(16000, np.int16)  # 1 s: the VAD ends the utterance within it


async def converse(url: str, sends: list[Any], timeout_s: float = 60) -> tuple[list, int, str]:
    """Send frames as fast as the socket takes them, read every text frame until the server
    closes: (messages, close code, close reason)."""
    messages: list[dict] = []
    async with websockets.connect(url, max_size=None) as ws:

        async def sender() -> None:
            for item in sends:
                if isinstance(item, float):
                    await asyncio.sleep(item)
                else:
                    await ws.send(item if isinstance(item, bytes) else json.dumps(item))

        task = asyncio.create_task(sender())
        try:
            async with asyncio.timeout(timeout_s):
                async for raw in ws:
                    messages.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return messages, ws.close_code, ws.close_reason or ""


def test_deepgram_protocol_by_hand(whisper_server: Any) -> None:
    audio, ref = sample("real/LJ001-0013")
    query = ("?model=nova-3&encoding=linear16&sample_rate=16000&punctuate=true&vad_events=true"
             "&utterance_end_ms=1000&keyterm=operations")  # fmt: skip
    frames = frames_of(np.concatenate([audio, SILENCE, SILENCE]))
    messages, code, _ = asyncio.run(
        converse(whisper_server.ws_url + query, [*frames, {"type": "CloseStream"}])
    )
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "SpeechStarted" and kinds[-1] == "Metadata" and code == 1000, kinds
    finals = [m for m in messages if m["type"] == "Results" and m["is_final"]]
    text = " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals)
    assert wer(ref["text"], text) <= 0.15, text
    assert finals[0]["speech_final"] and finals[0]["channel"]["alternatives"][0]["words"]
    assert "UtteranceEnd" in kinds
    assert messages[-1]["duration"] == pytest.approx((len(audio) + 32000) / 16000, abs=0.04)


def test_deepgram_refusal_is_an_error_frame_and_1008(whisper_server: Any) -> None:
    messages, code, reason = asyncio.run(
        converse(whisper_server.ws_url + "?model=nova-3&diarize=true", [])
    )
    assert [m["type"] for m in messages] == ["Error"]
    assert messages[0]["variant"] == "INVALID_QUERY_PARAMETER"
    assert (code, reason) == (1008, "INVALID_QUERY_PARAMETER")


def test_baseten_events_opt_in(whisper_server: Any) -> None:
    audio, ref = sample("real/LJ001-0013")
    meta = v1_metadata(partials=False, events=True, utterance_end_ms=500)
    sends = [meta, *frames_of(np.concatenate([audio, SILENCE])), 1.5, *frames_of(audio),
             {"type": "keep_alive"}, {"type": "finalize"}, 3.0, {"type": "end_audio"}]  # fmt: skip
    messages, code, _ = asyncio.run(converse(whisper_server.ws_url, sends))
    kinds = [m["type"] for m in messages]
    assert kinds.count("speech_started") == 2 and code == 1000, kinds
    assert kinds.index("utterance_end") > kinds.index("transcription")
    cut = [m for m in messages if m.get("from_finalize")]
    assert len(cut) == 1 and cut[0]["is_final"] and wer(ref["text"], cut[0]["transcript"]) <= 0.15
    after = kinds[kinds.index("transcription", kinds.index("utterance_end")) + 1]
    assert after == "finalize" and messages[-1]["body"]["status"] == "finished"


@pytest.mark.parametrize("cut", ["rst", "fin", "clean"])
@pytest.mark.parametrize(
    "point",
    ["before_audio", "mid_audio", "final_pending", "turn_pending", "after_finalize",
     "after_close_stream", "after_bad_control", "flux_turn_started", "flux_eager_pending",
     "flux_force_end_turn", "flux_close_stream"],
)  # fmt: skip
def test_deepgram_disconnect_at_every_point_frees_the_session(whisper_server, point, cut):
    """A Deepgram (or Deepgram Flux) client that leaves at any point (TCP reset, FIN without a
    close frame, or a clean close) frees its slot and its queued work, as Baseten's clients do.
    Flux's points: a turn just started (StartOfTurn came, the speech goes on, its partials run);
    an utterance's speculative final, early and late turn scores in flight (eager end of turn
    on); a ForceEndTurn's final pending; a CloseStream's flush pending."""
    from tests.test_whisper_e2e import _settled

    audio, _ = sample("order_en")
    query = "?model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true"
    if point == "turn_pending":
        query += "&eot_threshold=0.5"
    if point.startswith("flux_"):
        query = "?model=flux-general-en&encoding=linear16&sample_rate=16000"
        query += "&eager_eot_threshold=0.5" if point == "flux_eager_pending" else ""

    async def go():
        async with websockets.connect(whisper_server.ws_url + query) as ws:
            frames = [] if point == "before_audio" else frames_of(audio)
            for frame in frames[:50] if point in ("mid_audio", "flux_turn_started") else frames:
                await ws.send(frame)
            if point == "flux_turn_started":
                async with asyncio.timeout(30):
                    while json.loads(await ws.recv()).get("event") != "StartOfTurn":
                        pass
            elif point in ("final_pending", "turn_pending", "flux_eager_pending"):
                await asyncio.sleep(0.15)  # an utterance ended: its final (and score) run
            elif point == "flux_force_end_turn":
                await ws.send(json.dumps({"type": "ForceEndTurn"}))
            elif point == "after_finalize":
                await ws.send(json.dumps({"type": "Finalize"}))
            elif point in ("after_close_stream", "flux_close_stream"):
                await ws.send(json.dumps({"type": "CloseStream"}))  # finals + Metadata pending
            elif point == "after_bad_control":
                await ws.send(json.dumps({"type": "Bogus"}))
            if cut == "rst":
                ws.transport.abort()
            elif cut == "fin":
                ws.transport.close()

    asyncio.run(go())
    _settled(whisper_server)
