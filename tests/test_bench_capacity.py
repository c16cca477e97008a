"""scripts/bench/capacity.py: the knee search and where the knee is written (no server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import REPO_ROOT
from scripts.bench import capacity
from scripts.deploy.loadtest import Measurement


def _runner(knee: int, seen: list[int]):
    def run(n: int) -> Measurement:
        seen.append(n)
        m = Measurement("stt", "ws://x", n)
        m.violations = [] if n <= knee else ["final_latency_s_p95 1.3 > max 1.0"]
        return m

    return run


@pytest.mark.parametrize("knee", [1, 2, 4, 5, 7, 12, 40])
def test_the_search_finds_the_knee(knee: int) -> None:
    seen: list[int] = []
    found, levels = capacity.find_knee(_runner(knee, seen), start=1, limit=256)
    assert found == knee
    assert len(seen) == len(set(seen)) == len(levels)  # no level measured twice
    assert len(seen) < 2 * knee.bit_length() + 6  # grows geometrically, then bisects


def test_nothing_within_budget_is_a_knee_of_zero() -> None:
    seen: list[int] = []
    assert capacity.find_knee(_runner(0, seen), start=2)[0] == 0 and seen == [2]


def test_the_search_stops_at_the_limit() -> None:
    seen: list[int] = []
    assert capacity.find_knee(_runner(1000, seen), limit=10)[0] == 10 and max(seen) == 10


def test_stt_levels_keep_every_slot_busy_with_real_clips() -> None:
    spec = {"sessions": 4, "files": ["a", "b", "c"], "budgets": {"wer_max": 0.1}}
    level = capacity.level_spec("stt", spec, 5)
    assert level["sessions"] == 5 and level["files"] == ["a", "b", "c"] * 3 + ["a"]
    assert capacity.level_spec("tts", {"sessions": 8, "budgets": {}}, 3)["sessions"] == 3


YAML = """# comment kept
a:
  admission_capacity_sessions: 4  # why
  other: 1
b:
  admission_capacity_sessions: 2
"""


def test_set_key_edits_one_line_in_place() -> None:
    out = capacity.set_key(YAML, "admission_capacity_sessions", 9, section="b")
    assert out == YAML.replace("sessions: 2", "sessions: 9")
    out = capacity.set_key(YAML, "admission_capacity_sessions", 7, section="a")
    assert "sessions: 7  # why" in out and "sessions: 2" in out
    with pytest.raises(ValueError, match="expected one"):
        capacity.set_key(YAML, "admission_capacity_sessions", 1)  # two lines: ambiguous
    with pytest.raises(ValueError, match="no section"):
        capacity.set_key(YAML, "admission_capacity_sessions", 1, section="c")


def test_the_checked_in_files_each_have_the_line_the_knee_goes_to() -> None:
    for truss in capacity.PROTOCOL:
        text = capacity.CPU_STANDIN_FILE.read_text()
        capacity.set_key(text, capacity.CAPACITY_KEY, 3, section=truss)
        for config in (REPO_ROOT / truss).glob("config*.yaml"):
            capacity.set_key(config.read_text(), capacity.CAPACITY_KEY, 3)
        capacity.set_key(
            (REPO_ROOT / truss / "autoscaling.yaml").read_text(), "concurrency_target", 3
        )


def test_write_knee_cpu_standin_vs_production(tmp_path: Path, monkeypatch) -> None:
    truss = tmp_path / "orpheus_tts_truss"
    truss.mkdir()
    for name in ("config.yaml", "config_http.yaml", "autoscaling.yaml"):
        (truss / name).write_text((REPO_ROOT / "orpheus_tts_truss" / name).read_text())
    standin = tmp_path / "cpu_standin.yaml"
    standin.write_text(capacity.CPU_STANDIN_FILE.read_text())
    monkeypatch.setattr(capacity, "CPU_STANDIN_FILE", standin)

    from scripts.local.serve import load_cpu_defaults

    before = load_cpu_defaults(standin)
    assert capacity.write_knee(truss, 3, production=False) == [standin]
    cpu = load_cpu_defaults(standin)
    assert cpu["orpheus_tts_truss"]["ADMISSION_CAPACITY_SESSIONS"] == "3"
    assert cpu["whisper_streaming_truss"] == before["whisper_streaming_truss"]  # untouched

    written = capacity.write_knee(truss, 17, production=True)
    assert {p.name for p in written} == {"config.yaml", "config_http.yaml", "autoscaling.yaml"}
    import yaml

    for name in ("config.yaml", "config_http.yaml"):
        meta = yaml.safe_load((truss / name).read_text())["model_metadata"]
        assert meta["admission_capacity_sessions"] == 17
    assert yaml.safe_load((truss / "autoscaling.yaml").read_text())["concurrency_target"] == 17
