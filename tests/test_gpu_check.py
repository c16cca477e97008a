"""scripts/bench/gpu_check.py runs end to end (small, on the CPU) and writes the report it promises, so
that the one call on a borrowed GPU does not fail on a bug a CPU could have caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench import gpu_check

pytestmark = pytest.mark.slow


def test_tiny_cpu_run_writes_every_section(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["environment"]["device"] == "cpu"
    parity = report["snac_parity"]
    assert parity["max_abs"] == 0.0 and parity["signal_rms"] > 0  # CPU against itself
    assert [r["streams"] for r in report["snac_throughput"]] == [1, 2]
    assert all(r["windows_per_s"] > 0 for r in report["snac_throughput"])
    levels = report["pipeline"]["levels"]
    assert [level["streams"] for level in levels] == [1, 2]
    for level in levels:
        # every frame x 2048 samples at 24 kHz per stream, all of it streamed
        frames = gpu_check.TINY.pipeline_frames
        assert level["audio_s_per_stream"] == pytest.approx(frames * 2048 / 24000, abs=1e-3)
        assert 0 < level["ttfa_p50_ms"] <= level["ttfa_p95_ms"]
        assert level["rtf_p50"] > 0


def test_budget_skips_what_does_not_fit(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--budget-s", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(r.get("skipped") == "time budget" for r in report["snac_throughput"])
    assert all(r.get("skipped") == "time budget" for r in report["pipeline"]["levels"])


def test_orpheus_3b_shape_matches_the_checkpoint_layout() -> None:
    # Llama 3.2 3B: ~3.2 B parameters with tied embeddings at Orpheus's vocabulary.
    from orpheus_tts.dummy import ORPHEUS_3B_SHAPE
    from orpheus_tts.tokens import VOCAB_SIZE

    s = ORPHEUS_3B_SHAPE
    head_dim = s["hidden_size"] // s["num_attention_heads"]
    per_layer = (
        s["hidden_size"] * head_dim * (s["num_attention_heads"] * 2 + s["num_key_value_heads"] * 2)
        + 3 * s["hidden_size"] * s["intermediate_size"]
        + 2 * s["hidden_size"]
    )
    total = per_layer * s["num_hidden_layers"] + VOCAB_SIZE * s["hidden_size"] + s["hidden_size"]
    assert 3.2e9 < total < 3.4e9


def test_carried_wheels_are_the_dev_venvs_versions() -> None:
    """What the GPU machine installs is what the tests here ran with."""
    import re
    from importlib.metadata import version

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    (line,) = [x for x in makefile.splitlines() if x.startswith("GPU_WHEELS :=")]
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==(\S+)", line))
    assert set(pins) == {"snac", "einops", "prometheus-client"}
    for name, pinned in pins.items():
        assert version(name) == pinned, name
