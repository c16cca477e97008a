"""scripts/bench/replay.py: the finals a session gives without a server are the server's."""

from __future__ import annotations

import asyncio
import wave

import numpy as np
import pytest

from scripts import REPO_ROOT
from scripts.bench.replay import Replayer
from scripts.clients.stt import FRAME_SAMPLES, final_text, frames_of, read_wav, stream, v1_metadata

pytestmark = pytest.mark.e2e

# Joined by 1 s of silence: a natural pause after "Now", a long one between the clips (where
# the pause pre-roll applies).
CLIPS = ("LJ001-0010", "LJ001-0002")
RATE_HZ = 16000


def _spans(finals: list[dict]) -> list[tuple[float, float]]:
    return [(f["segments"][0]["start_time"], f["segments"][-1]["end_time"]) for f in finals]


def test_replay_gives_the_servers_finals(whisper_server, tmp_path) -> None:
    """The same finals, word for word and over the same audio, from the replay and from the
    real server (audio sent unpaced: finals do not depend on timing)."""
    parts = [read_wav(REPO_ROOT / "samples" / "real" / f"{name}.wav") for name in CLIPS]
    audio = np.concatenate([parts[0], np.zeros(RATE_HZ, np.int16), parts[1]])
    path = tmp_path / "joined.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE_HZ)
        w.writeframes(audio.tobytes())
    metadata = v1_metadata(partials=False)

    replayed = Replayer().finals(path, metadata)
    served = asyncio.run(
        stream(
            whisper_server.ws_url,
            frames_of(audio),
            metadata,
            frame_s=FRAME_SAMPLES / RATE_HZ,
            realtime=False,
        )
    ).finals
    assert len(replayed) >= 3
    assert [final_text(f) for f in replayed] == [final_text(f) for f in served]
    assert _spans(replayed) == _spans(served)
