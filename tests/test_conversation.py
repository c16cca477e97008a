"""scripts/bench/conversation.py: the conversational set is built the same way every time, its
references are the clips' texts in order, its timeline says where every gap, pause and clip
is, and its error diagnosis charges each error to the right place (no server, no model)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from scripts.bench import conversation as conv
from scripts.bench import stt as bench


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conversation")
    conv.build(out)
    return out


@pytest.fixture(scope="module")
def clips() -> dict[str, conv.Clip]:
    return {c.name: c for c in conv.load_clips()}


def metas(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("conv-*.json"))}


def test_the_same_seed_builds_the_same_bytes(built: Path, tmp_path: Path) -> None:
    conv.build(tmp_path)
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 * conv.STREAMS
    for name in names:
        assert (built / name).read_bytes() == (tmp_path / name).read_bytes(), name
    conv.build(tmp_path, seed=conv.SEED + 1)
    assert (built / "conv-00.wav").read_bytes() != (tmp_path / "conv-00.wav").read_bytes()


def test_references_are_the_clips_texts_in_order(built: Path, clips) -> None:
    seen = []
    for meta in metas(built).values():
        speech = [s for s in meta["segments"] if s["kind"] == "speech"]
        assert meta["text"] == " ".join(s["text"] for s in speech)
        order = [s["clip"] for s in speech if s["part"] != "tail"]
        assert " ".join(clips[n].text for n in order) == meta["text"]  # split clips rejoin
        assert 60 <= meta["duration_s"] <= 120
        assert len(meta["speakers"]) >= 3
        seen += order
    assert sorted(seen) == sorted(clips)  # every clip once


def test_the_timeline_says_where_the_speech_gaps_and_pauses_are(built: Path, clips) -> None:
    pauses = 0
    for name, meta in metas(built).items():
        audio = conv.read_pcm16(built / f"{name}.wav")
        segments = meta["segments"]
        assert segments[0]["start"] == 0 and segments[-1]["end"] == len(audio)
        assert segments[0]["kind"] == segments[-1]["kind"] == "gap"
        for before, seg, after in zip(segments, segments[1:], segments[2:], strict=False):
            assert before["end"] == seg["start"] and seg["end"] == after["start"]
            if seg["kind"] == "pause":  # inside one clip's sentence, between its two halves
                assert before["clip"] == after["clip"] == seg["clip"]
                assert (before["part"], after["part"]) == ("head", "tail")
                words = clips[seg["clip"]].text.split()
                assert before["text"] == " ".join(words[: seg["after_word"]])
        for seg in segments:
            piece = audio[seg["start"] : seg["end"]]
            length_s = len(piece) / conv.RATE
            assert seg["start_s"] == round(seg["start"] / conv.RATE, 3)
            if seg["kind"] == "speech":  # the clip's own samples, untouched
                clip = clips[seg["clip"]].samples
                assert np.array_equal(piece, clip[seg["clip_start"] : seg["clip_end"]])
                assert seg["start_s"] <= seg["voiced_start_s"] < seg["voiced_end_s"] <= seg["end_s"]
            else:
                lo, hi = conv.GAP_S if seg["kind"] == "gap" else conv.PAUSE_S
                assert lo <= length_s <= hi + 1e-3
                rms = 20 * np.log10(np.sqrt(np.mean((piece / 32768.0) ** 2)))
                assert abs(rms - seg["dbfs"]) < 0.3, (name, seg)
                pauses += seg["kind"] == "pause"
    assert pauses >= 8


def test_streamed_latency_uses_the_timeline(built: Path, monkeypatch) -> None:
    """The gaps' noise is louder than bench-stt's silence level: utterances come from the
    timeline, one per speech part."""
    monkeypatch.setitem(bench.PATHS, "conv-00", built / "conv-00.wav")
    meta = metas(built)["conv-00"]
    regions = bench.utterance_regions("conv-00", conv.read_pcm16(built / "conv-00.wav"))
    assert len(regions) == sum(s["kind"] == "speech" for s in meta["segments"]) > 5


def test_committed_cut_points_lie_in_a_dip_between_the_right_words() -> None:
    """Both kinds of cut point (a clause's dip, a hesitation after a function word) of the
    development clips and the held-out ones: between the words they name."""
    spec = conv.load_spec()
    clips = {c.name: c for c in conv.load_clips((*conv.SOURCES, conv.HELD_OUT))}
    assert len(spec["cuts"]) >= 15 and len(spec["hesitations"]) >= 10
    for name, cut in [*spec["cuts"].items(), *spec["hesitations"].items()]:
        clip = clips[name]
        words = clip.text.split()
        k = cut["after_word"]
        assert 3 <= k <= len(words) - 3
        assert " ".join(words[max(0, k - 3) : k]) == cut["before"]
        assert " ".join(words[k : k + 3]) == cut["after"]
    for name, cut in spec["cuts"].items():  # a hesitation may lie at any depth
        clip = clips[name]
        db = conv.frame_db(clip.samples)
        first = round(cut["at_s"] * 100 - 1.5)  # the cut is the middle of three 10 ms frames
        assert db[first : first + 3].max() - np.percentile(db, 95) < -25, name
    for name in clips:
        conv.speaker_of(name, spec)  # every clip has its speaker


def test_clips_are_dealt_evenly_and_more_streams_reuse_them(clips) -> None:
    dealt = conv.deal(list(clips.values()), 4, random.Random(1))
    lengths = [sum(c.duration_s for c in s) for s in dealt]
    assert max(lengths) - min(lengths) < 12
    assert sorted(c.name for s in dealt for c in s) == sorted(clips)
    many = conv.deal(list(clips.values()), 12, random.Random(1))
    assert all(sum(c.duration_s for c in s) + 1.75 * len(s) >= 60 for s in many)


def _meta(*clips: tuple[str, str, int | None]) -> dict:
    """A timeline of (clip, text, pause after word k or None) without audio."""
    segments: list[dict] = [{"kind": "gap"}]
    for name, text, k in clips:
        words = text.split()
        if k is None:
            segments.append({"kind": "speech", "clip": name, "part": "whole", "text": text})
        else:
            segments += [
                {"kind": "speech", "clip": name, "part": "head", "text": " ".join(words[:k])},
                {"kind": "pause", "clip": name, "after_word": k},
                {"kind": "speech", "clip": name, "part": "tail", "text": " ".join(words[k:])},
            ]
        segments.append({"kind": "gap"})
    text = " ".join(s["text"] for s in segments if s["kind"] == "speech")
    return {"text": text, "segments": segments}


def test_errors_are_charged_to_where_they_fall() -> None:
    meta = _meta(
        ("a", "the first one speaks here", None),
        ("b", "printing in the only sense with which we are concerned", None),
        ("c", "he was not an ill disposed young man", 4),
        ("d", "yes please", None),
    )
    streamed = (
        "the first one speaks here "  # first utterance: right
        "in the only sense with which we are concerned "  # "printing" lost: a clipped onset
        "he was not in ill disposed young man "  # "an" wrong: just after the pause
        "yes peas"  # a short utterance's last word
    )
    one_clip = {"b": "printing in the only sense with which we are concerned", "d": "yes peas"}
    texts = conv.texts_of(meta)
    errors, words = conv.diagnose_stream(meta, streamed, streamed, one_clip, texts)
    got = [(e["kind"], e["ref"], e["hyp"], e["category"], e["one_clip_also"]) for e in errors]
    assert got == [
        ("deletion", "printing", "", "utterance onset (first 2 words)", False),
        ("substitution", "an", "in", "either side of an in-sentence pause", None),
        ("substitution", "please", "peas", "in a short final (<= 3 words)", True),
    ]
    assert all(e["offline_also"] for e in errors)  # the "offline" text was the same
    assert all(e["final_edge"] is None for e in errors)  # no finals given
    assert sum(words.values()) == 25 and words["first utterance of the stream"] == 5
    assert words["either side of an in-sentence pause"] == 2
    ref = conv.reference_words(meta)
    assert [w.pause_at for w in ref if w.clip == "c"] == [4] * 8
    assert conv.category(ref[14]) == "utterance end (last word)"  # "concerned"

    # With the finals: "in the only sense" came out as a final of its own (a short final,
    # no context), and "printing" was lost at its edge.
    finals = [
        "the first one speaks here",
        "in the only",
        "sense with which we are concerned",
        "he was not in",
        "ill disposed young man",
        "yes peas",
    ]
    errors, words = conv.diagnose_stream(meta, streamed, None, None, None, finals)
    assert [(e["ref"], e["category"], e["final_edge"]) for e in errors] == [
        ("printing", "in a short final (<= 3 words)", True),
        ("an", "either side of an in-sentence pause", True),
        ("please", "in a short final (<= 3 words)", True),
    ]
    assert words["in a short final (<= 3 words)"] == 6  # printing in the only, yes please


def test_a_silent_stream_is_all_deletions() -> None:
    errors = conv.word_errors(["a", "b"], "")
    assert [(e.kind, e.ref) for e in errors] == [("deletion", "a"), ("deletion", "b")]
