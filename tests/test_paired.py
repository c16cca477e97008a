"""scripts/bench/paired.py: two systems' transcripts compared clip by clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench.paired import compare, one_clip_vs_offline, print_paired, references

REFS = {f"c{i}": "the quick brown fox jumps over the lazy dog" for i in range(10)}


def test_identical_systems_have_no_gap_and_a_zero_interval() -> None:
    paired = compare(REFS, REFS, REFS)
    assert paired.words == 90
    assert paired.gap() == 0.0 and paired.interval == (0.0, 0.0)
    assert paired.differing == []


def test_a_gap_made_by_one_clip_is_not_called_a_difference() -> None:
    a = dict(REFS, c0="the quick brown fax jumps over a lazy dog")  # 2 errors in one clip
    paired = compare(REFS, a, REFS)
    assert paired.points() == pytest.approx((100 * 2 / 90, 0.0))
    low, high = paired.interval
    assert low == 0.0 < paired.gap() < high  # resampling leaves the clip out as often as not
    assert [c.name for c in paired.differing] == ["c0"]


def test_a_gap_in_every_clip_is_a_difference() -> None:
    a = {n: "the quick brown fax jumps over the lazy dog" for n in REFS}
    low, high = compare(REFS, a, REFS).interval
    assert low == pytest.approx(100 / 9) == high


def test_compounds_spaced_otherwise_are_one_word_in_the_respaced_gap() -> None:
    refs = {"a": "before the woodcutters of the netherlands", "b": "fasten your seat belts"}
    stream = {"a": "before the wood cutters of the netherlands", "b": "fasten your seatbelts"}
    paired = compare(refs, stream, refs)
    assert paired.points() == pytest.approx((100 * 4 / 10, 0.0))
    assert paired.gap(respaced=True) == 0.0
    assert [(c.a, c.a_respaced) for c in paired.clips] == [(2, 0), (2, 0)]


def test_only_clips_with_a_reference_and_both_transcripts_count() -> None:
    paired = compare(REFS, {"c0": REFS["c0"], "x": "a"}, REFS)
    assert [c.name for c in paired.clips] == ["c0"]
    with pytest.raises(ValueError):
        compare(REFS, {"x": "a"}, REFS)


def test_the_report_is_read_clip_by_clip(tmp_path: Path, capsys) -> None:
    for name, text in (("one", "printed with movable types"), ("two", "the letterpress")):
        (tmp_path / "set").mkdir(exist_ok=True)
        (tmp_path / "set" / f"{name}.wav").write_bytes(b"")
        (tmp_path / "set" / f"{name}.json").write_text(json.dumps({"text": text}))
    assert references(["two"], tmp_path) == {"two": "the letterpress"}
    with pytest.raises(FileNotFoundError):
        references(["three"], tmp_path)
    report = {
        "one_clip_files": ["one", "two"],
        "one_clip_levels": [{"transcripts": {"one": "Printed with movable types.", "two": "The letter press."}}],
        "offline_transcripts": {"one": "printed with movable type", "two": "the letterpress"},
    }  # fmt: skip
    paired = one_clip_vs_offline(report, tmp_path)
    assert paired is not None and [(c.a, c.b) for c in paired.clips] == [(0, 1), (2, 0)]
    print_paired(paired, "stream", "offline")
    out = capsys.readouterr().out
    assert "6 words): 33.33 % vs 16.67 %" in out and "compounds as one word: 0 / 0" in out
    assert one_clip_vs_offline(dict(report, offline_transcripts={}), tmp_path) is None


def test_under_a_folder_only_its_clips_count(tmp_path: Path) -> None:
    for folder, name in (("a", "one"), ("b", "two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"{name}.wav").write_bytes(b"")
        (tmp_path / folder / f"{name}.json").write_text(json.dumps({"text": "a word"}))
    report = {
        "one_clip_files": ["one", "two"],
        "one_clip_levels": [{"transcripts": {"one": "a word", "two": "a bird"}}],
        "offline_transcripts": {"one": "a word", "two": "a word"},
    }
    paired = one_clip_vs_offline(report, tmp_path, under=tmp_path / "b")
    assert paired is not None and [(c.name, c.a) for c in paired.clips] == [("two", 1)]
