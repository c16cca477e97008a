"""Smart Turn v3 parity with pipecat itself: pipecat's own front end and analyzer (in
.venv-clients, where pipecat-ai is installed) and speech_common.turn compute the same features
and the same P(complete) on real speech, whole and cut, shorter and longer than the model's 8 s.

The model's int8 kernels are not the same in every onnxruntime: on the real clips, 1.31.1 (the
STT image's) and 1.32.0 (.venv-clients') gave bit-identical P(complete) for most turns and a few
hundredths apart for a few. So the probabilities are compared within one runtime (ours run in
.venv-clients too); across the two, only the decision is."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from speech_common.audio import int16_to_float
from speech_common.turn import COMPLETE_THRESHOLD, SmartTurn, log_mel_features
from tests.test_clients import PYTHON

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "samples" / "real"
# A finished sentence (7.6 s), an 11 s speech (longer than the model hears), a short one (4.5 s).
CLIPS = ["LJ001-0009", "jfk-inaugural", "platforms"]
PIPECAT_TIMEOUT_S = 120

# Each clip whole and its first half (cut mid-sentence), as pipecat hears them: its analyzer's
# own _predict_endpoint (truncation, features, model) and its feature function on the same 8 s;
# and SmartTurn's probabilities on the same runtime.
PIPECAT_SCRIPT = textwrap.dedent("""
    import json, sys, wave
    import numpy as np
    from pipecat.audio.turn.smart_turn._whisper_features import compute_whisper_log_mel_features
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from speech_common.turn import SmartTurn

    analyzer = LocalSmartTurnAnalyzerV3()
    last_8_s = 8 * 16000
    turns, features, probabilities = {}, {}, {}
    for path in sys.argv[2:]:
        with wave.open(path) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        audio = pcm.astype(np.float32) / 32768.0
        turns[path], turns[path + ":half"] = audio, audio[: len(audio) // 2]
    for key, turn in turns.items():
        probabilities[key] = analyzer._predict_endpoint(turn)["probability"]
        heard = np.pad(turn[-last_8_s:], (max(last_8_s - len(turn), 0), 0))
        features[key] = compute_whisper_log_mel_features(heard, do_normalize=True)
    ours = SmartTurn().probabilities(list(turns.values())).tolist()
    np.savez(sys.argv[1], **{str(i): f for i, f in enumerate(features.values())})
    print(json.dumps({"keys": list(turns), "pipecat": probabilities, "ours": ours}))
""")


def turns(path: Path) -> dict[str, np.ndarray]:
    with wave.open(str(path)) as w:
        audio = int16_to_float(np.frombuffer(w.readframes(w.getnframes()), "<i2"))
    return {str(path): audio, f"{path}:half": audio[: len(audio) // 2]}


@pytest.mark.skipif(not PYTHON.exists(), reason="no .venv-clients (make venv-clients)")
def test_features_and_probabilities_equal_pipecats(tmp_path: Path) -> None:
    paths = [str(REAL / f"{clip}.wav") for clip in CLIPS]
    npz = tmp_path / "pipecat_features.npz"
    proc = subprocess.run(
        [str(PYTHON), "-c", PIPECAT_SCRIPT, str(npz), *paths],
        capture_output=True, text=True, timeout=PIPECAT_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": str(REPO / "shared")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    pipecat_features = np.load(npz)

    ours = {key: audio for path in paths for key, audio in turns(Path(path)).items()}
    assert result["keys"] == list(ours)
    for i, (key, audio) in enumerate(ours.items()):
        np.testing.assert_allclose(
            log_mel_features(audio), pipecat_features[str(i)], atol=1e-4, err_msg=key
        )
    pipecat = np.array([result["pipecat"][key] for key in ours])
    np.testing.assert_allclose(result["ours"], pipecat, atol=1e-4)
    # Here, on the STT image's onnxruntime: the same decisions.
    here = SmartTurn().probabilities(list(ours.values()))
    assert list(here > COMPLETE_THRESHOLD) == list(pipecat > COMPLETE_THRESHOLD)
