#!/usr/bin/env python
"""The conversational dev set: long streams of real speech, as one STT socket of a call hears them.

    python scripts/bench/conversation.py build [--out DIR] [--streams 4] [--seed 23]
    python scripts/bench/conversation.py build --sources samples/real --no-pauses
    python scripts/bench/conversation.py diagnose bench_results/stt_conversation.json
    python scripts/bench/conversation.py turns bench_results/replay.json   # end_of_turn runs
    python scripts/bench/conversation.py cuts      # re-derive the in-sentence cut points

A voice agent keeps one socket for the whole call, so every utterance after the first starts
mid-stream. ``build`` deals the real clips of ``samples/real`` and ``samples/real_speakers``
(each once, shuffled with a seed; again, reshuffled, while a stream is under 60 s) into N
streams of similar length (about 85 s each at N=4) and joins them with gaps of 0.5-3 s of low
noise (-60 dBFS white noise). About 2 in 3 of the clips that have a cut point in the spec
(``samples/conversation.json``) get a pause INSIDE the sentence: the clip is cut at a
low-energy point between two words and 0.6-1.5 s of noise at the clip's own background level
is inserted there. Each stream is ``conv-NN.wav`` (16 kHz mono s16le) and ``conv-NN.json``:
``{"text": reference}`` (the clips' texts in order) plus the timeline, ``segments``: every
gap, pause and speech part with its sample range, the clip, speaker and voiced extent of each
speech part and, for a pause, after which word of the sentence it comes. The same seed builds
the same bytes. bench-stt's ``--conversation`` builds the set and streams it.

``diagnose`` reads bench-stt's JSON and charges each streamed error to a reference word
(jiwer's alignment), classified by where it lies: the stream's first clip, either side of an
in-sentence pause, a final of at most 3 words, a clip's first two words, its last word, the
rest; and says whether the same word was wrong in the offline transcription of the whole
stream, when the clip had a socket to itself, and whether it begins or ends a final. It also
says how the finals cut the stream (a clip split over several finals, two in one final).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import wave
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts import REPO_ROOT, SAMPLES_DIR
from scripts.bench.wer import normalise

RATE = 16000
SOURCES = (SAMPLES_DIR / "real", SAMPLES_DIR / "real_speakers")
HELD_OUT = SAMPLES_DIR / "real_heldout"  # never tuned on: --sources samples/real_heldout
SPEC = SAMPLES_DIR / "conversation.json"
DEFAULT_OUT = REPO_ROOT / "bench_results" / "conversation"
SEED = 23  # issue 23
STREAMS = 4
GAP_S = (0.5, 3.0)  # low noise between utterances
GAP_DBFS = -60.0  # RMS of the gaps' white noise
PAUSE_S = (0.6, 1.5)  # inserted inside a sentence
PAUSE_SHARE = 2 / 3  # of the clips with a cut point, about this share gets a pause
MIN_STREAM_S = 60.0
FRAME = RATE // 100  # 10 ms: the energy frames
VOICED_DB = 35.0  # a frame within this of the clip's loudest is voiced (the speech extent)
ABOVE_FLOOR_DB = 10.0  # ... and at least this over its background


@dataclass(frozen=True)
class Clip:
    name: str
    source: str  # folder from the repository root
    text: str
    speaker: str
    samples: np.ndarray  # int16

    @property
    def duration_s(self) -> float:
        return len(self.samples) / RATE


def read_pcm16(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: not 16 kHz mono s16le")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def write_pcm16(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def load_spec(path: Path = SPEC) -> dict:
    return json.loads(path.read_text())


def speaker_of(name: str, spec: dict) -> str:
    for prefix, speaker in spec["speakers"].items():
        if name.startswith(prefix):
            return speaker
    raise KeyError(f"{name}: no speaker in {SPEC.name}")


def load_clips(sources: tuple[Path, ...] = SOURCES, spec: dict | None = None) -> list[Clip]:
    spec = load_spec() if spec is None else spec
    clips = []
    for folder in sources:
        for wav in sorted(folder.glob("*.wav")):
            text = json.loads(wav.with_suffix(".json").read_text())["text"]
            source = folder.resolve()
            if source.is_relative_to(REPO_ROOT):
                source = source.relative_to(REPO_ROOT)
            clips.append(
                Clip(
                    wav.stem,
                    source.as_posix(),
                    text,
                    speaker_of(wav.stem, spec),
                    read_pcm16(wav),
                )
            )
    return clips


# -- energy ------------------------------------------------------------------------------------
def frame_db(samples: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """RMS of each ``frame``-sample frame in dBFS."""
    x = samples[: len(samples) // frame * frame].astype(np.float64) / 32768.0
    rms = np.sqrt((x.reshape(-1, frame) ** 2).mean(axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-7))


def floor_dbfs(samples: np.ndarray) -> float:
    """The clip's background: the 10th percentile of its 10 ms frames' RMS."""
    return float(np.percentile(frame_db(samples), 10))


def voiced_extent(samples: np.ndarray) -> tuple[int, int]:
    """First and last sample of the frames within VOICED_DB of the loudest and ABOVE_FLOOR_DB
    over the clip's background (the speech: FLEURS's background is only ~35 dB down)."""
    db = frame_db(samples)
    loud = np.flatnonzero(db >= max(db.max() - VOICED_DB, floor_dbfs(samples) + ABOVE_FLOOR_DB))
    return int(loud[0] * FRAME), int(min(len(samples), (loud[-1] + 1) * FRAME))


def noise(rng: np.random.Generator, n: int, dbfs: float) -> np.ndarray:
    """``n`` samples of white noise at ``dbfs`` RMS (int16)."""
    x = rng.standard_normal(n) * 32768.0 * 10 ** (dbfs / 20)
    return np.clip(np.round(x), -32768, 32767).astype("<i2")


# -- building ----------------------------------------------------------------------------------
def deal(clips: list[Clip], streams: int, rng: random.Random) -> list[list[Clip]]:
    """Each clip once, shuffled, to the stream with the least audio so far; decks are dealt
    again (reshuffled) while a stream holds under MIN_STREAM_S (many streams, few clips)."""
    out: list[list[Clip]] = [[] for _ in range(streams)]
    lengths = [0.0] * streams
    while True:
        deck = list(clips)
        rng.shuffle(deck)
        for clip in deck:
            i = min(range(streams), key=lambda k: (lengths[k], k))
            out[i].append(clip)
            lengths[i] += clip.duration_s + sum(GAP_S) / 2
        if min(lengths) >= MIN_STREAM_S:
            return out


def _seconds(n: int) -> float:
    return round(n / RATE, 3)


def build_stream(
    clips: list[Clip],
    cuts: dict[str, dict],
    rng: random.Random,
    noise_rng: np.random.Generator,
    pause_share: float = PAUSE_SHARE,
) -> tuple[np.ndarray, list[dict]]:
    """One stream's samples and timeline: a gap, then each clip (with its in-sentence pause, if
    drawn) followed by a gap."""
    parts: list[np.ndarray] = []
    segments: list[dict] = []
    pos = 0

    def add(samples: np.ndarray, segment: dict) -> None:
        nonlocal pos
        segment.update(start=pos, end=pos + len(samples))
        segment.update(start_s=_seconds(pos), end_s=_seconds(pos + len(samples)))
        parts.append(samples)
        segments.append(segment)
        pos += len(samples)

    def gap() -> None:
        n = round(rng.uniform(*GAP_S) * RATE)
        add(noise(noise_rng, n, GAP_DBFS), {"kind": "gap", "dbfs": GAP_DBFS})

    def speech(clip: Clip, lo: int, hi: int, text: str, part: str) -> None:
        v0, v1 = voiced_extent(clip.samples[lo:hi])
        segment = {
            "kind": "speech",
            "clip": clip.name,
            "source": clip.source,
            "speaker": clip.speaker,
            "part": part,
            "text": text,
            "clip_start": lo,
            "clip_end": hi,
        }
        start = pos
        add(clip.samples[lo:hi], segment)
        segment.update(voiced_start_s=_seconds(start + v0), voiced_end_s=_seconds(start + v1))

    gap()
    for clip in clips:
        cut = cuts.get(clip.name)
        if cut is not None and rng.random() < pause_share:
            at = round(cut["at_s"] * RATE)
            words = clip.text.split()
            k = cut["after_word"]
            level = floor_dbfs(clip.samples)
            speech(clip, 0, at, " ".join(words[:k]), "head")
            n = round(rng.uniform(*PAUSE_S) * RATE)
            pause = {"kind": "pause", "clip": clip.name, "after_word": k, "dbfs": round(level, 1)}
            add(noise(noise_rng, n, level), pause)
            speech(clip, at, len(clip.samples), " ".join(words[k:]), "tail")
        else:
            speech(clip, 0, len(clip.samples), clip.text, "whole")
        gap()
    return np.concatenate(parts), segments


def build(
    out: Path = DEFAULT_OUT,
    streams: int = STREAMS,
    seed: int = SEED,
    sources: tuple[Path, ...] = SOURCES,
    pauses: bool = True,
    hesitations: bool = False,
) -> list[Path]:
    """Write ``conv-NN.wav`` + ``conv-NN.json`` for each stream into ``out``; the WAV paths.
    ``pauses=False``: no pause inside a sentence (clips joined by gaps only); ``hesitations``:
    every clip that has one gets a pause at its hesitation cut (the spec's ``hesitations``)
    instead of its natural one."""
    spec = load_spec()
    clips = load_clips(tuple(Path(p).resolve() for p in sources), spec)
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("conv-*.*"):
        old.unlink()
    paths = []
    for i, stream_clips in enumerate(deal(clips, streams, rng)):
        share = (1.0 if hesitations else PAUSE_SHARE) if pauses else 0.0
        cuts = spec["hesitations"] if hesitations else spec["cuts"]
        samples, segments = build_stream(stream_clips, cuts, rng, noise_rng, share)
        name = f"conv-{i:02d}"
        write_pcm16(out / f"{name}.wav", samples)
        meta = {
            "text": " ".join(s["text"] for s in segments if s["kind"] == "speech"),
            "rate_hz": RATE,
            "duration_s": _seconds(len(samples)),
            "seed": seed,
            "speakers": sorted({s["speaker"] for s in segments if s["kind"] == "speech"}),
            "segments": segments,
        }
        (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
        paths.append(out / f"{name}.wav")
    return paths


def speech_regions(meta: dict) -> list[tuple[float, float]]:
    """(start_s, end_s) of each speech part's voiced extent: where finals end, for latency."""
    return [
        (s["voiced_start_s"], s["voiced_end_s"]) for s in meta["segments"] if s["kind"] == "speech"
    ]


# -- cut points (needs faster-whisper; run once, the result is committed in SPEC) ---------------
def _norm_words(words: list[str]) -> tuple[list[str], list[int]]:
    """Each word normalised on its own; the tokens and the word each token came from."""
    tokens, owner = [], []
    for i, word in enumerate(words):
        for t in normalise(word).split():
            tokens.append(t)
            owner.append(i)
    return tokens, owner


def _transcribe(model, samples: np.ndarray, **options) -> list:
    segments, _ = model.transcribe(
        samples.astype(np.float32) / 32768.0, language="en", beam_size=5, **options
    )
    return list(segments)


def _splits_cleanly(model, clip: Clip, at: int, k: int) -> bool:
    """Transcribed on their own, the head ends with the sentence's k-th word and the tail starts
    with the next: the cut lies between those words, not inside one."""
    words = clip.text.split()
    head = normalise(" ".join(s.text for s in _transcribe(model, clip.samples[:at]))).split()
    tail = normalise(" ".join(s.text for s in _transcribe(model, clip.samples[at:]))).split()
    want_head = normalise(" ".join(words[:k])).split()
    want_tail = normalise(" ".join(words[k:])).split()
    return bool(head and tail) and head[-1] == want_head[-1] and tail[0] == want_tail[0]


def find_cut(clip: Clip, model, hesitation: bool = False) -> dict | None:
    """An in-sentence cut point: a boundary between two words with at least 3 words either side
    (Whisper's word timestamps place the words), cut in the 30 ms of least energy around it,
    at least 25 dB under the clip's speech; the deepest such dip whose two halves, transcribed
    on their own, end and start with the right words. None if no boundary qualifies.

    ``hesitation``: a boundary after a function word instead ("printed from the | blocks"),
    where the sentence cannot be over, nearest the sentence's middle, at any depth: where a
    speaker hesitates, not where a reader breathes (the deepest dips are mostly clause ends)."""
    import jiwer

    hyp = [w for s in _transcribe(model, clip.samples, word_timestamps=True) for w in s.words]
    ref_words = clip.text.split()
    ref_tok, ref_owner = _norm_words(ref_words)
    hyp_tok, hyp_owner = _norm_words([w.word for w in hyp])
    if len(ref_words) < 8 or not hyp_tok:
        return None
    # hyp token index -> ref token index, where the two agree
    matched: dict[int, int] = {}
    for chunk in jiwer.process_words(" ".join(ref_tok), " ".join(hyp_tok)).alignments[0]:
        if chunk.type == "equal":
            for k in range(chunk.hyp_end_idx - chunk.hyp_start_idx):
                matched[chunk.hyp_start_idx + k] = chunk.ref_start_idx + k
    db = frame_db(clip.samples)
    speech_db = float(np.percentile(db, 95))
    candidates = []
    for h in range(1, len(hyp_tok)):
        if hyp_owner[h] == hyp_owner[h - 1] or h not in matched or h - 1 not in matched:
            continue
        r = matched[h]
        if matched[h - 1] != r - 1 or ref_owner[r] == ref_owner[r - 1]:
            continue
        k = ref_owner[r]  # raw words before the cut
        if k < 3 or len(ref_words) - k < 3:
            continue
        left, right = hyp[hyp_owner[h - 1]], hyp[hyp_owner[h]]
        lo = max(0, int((left.end - 0.08) * 100))
        hi = min(len(db) - 3, int((right.start + 0.08) * 100))
        if hi <= lo:
            continue
        window = np.array([db[i : i + 3].max() for i in range(lo, hi + 1)])
        i = lo + int(window.argmin())
        depth = float(window.min()) - speech_db
        at_s = round((i + 1.5) * FRAME / RATE, 3)
        if hesitation and normalise(ref_words[k - 1]) in FUNCTION_WORDS:
            candidates.append((abs(k - len(ref_words) / 2), at_s, k, depth))
        elif not hesitation and depth < -25:
            candidates.append((depth, at_s, k, depth))
    for _, at_s, k, depth in sorted(candidates)[:4]:
        if _splits_cleanly(model, clip, round(at_s * RATE), k):
            return {
                "at_s": at_s,
                "after_word": k,
                "before": " ".join(ref_words[max(0, k - 3) : k]),
                "after": " ".join(ref_words[k : k + 3]),
                "depth_db": round(depth, 1),
            }
    return None


# Words after which a sentence cannot end (a hesitation cut comes after one).
FUNCTION_WORDS = frozenset(
    """a an the of to in into for with by from at on and or but nor that which who whose
    his her its their our your my this these those is was are were be been has have had as
    than very most more""".split()
)


def find_cuts(hesitation: bool = False, sources: tuple[Path, ...] = SOURCES) -> dict[str, dict]:
    from faster_whisper import WhisperModel

    from scripts.local.serve import embedded_whisper_dir

    model = WhisperModel(embedded_whisper_dir(), device="cpu", compute_type="int8")
    cuts = {}
    for clip in load_clips(sources):
        cut = find_cut(clip, model, hesitation)
        if cut is not None:
            cuts[clip.name] = cut
    return cuts


# -- diagnosis ---------------------------------------------------------------------------------
ONSET_WORDS = 2  # an utterance's first words
END_WORDS = 1  # its last word
SHORT_WORDS = 3  # a final (or, without finals, a clip) of at most this many words is short

CATEGORIES = (
    "first utterance of the stream",
    "either side of an in-sentence pause",
    "in a short final (<= 3 words)",
    "utterance onset (first 2 words)",
    "utterance end (last word)",
    "inside an utterance",
)


@dataclass
class RefWord:
    word: str
    clip: str
    clip_index: int  # the clip's place in the stream (0: the first utterance)
    index: int  # the word's place in its clip (normalised tokens)
    clip_words: int
    pause_at: int | None  # the clip's in-sentence pause comes before this token


def reference_words(meta: dict) -> list[RefWord]:
    """The stream's reference, normalised clip by clip, each token with its place."""
    utterances: list[list[dict]] = []  # each clip's speech parts (a paused clip has two)
    for s in meta["segments"]:
        if s["kind"] == "speech":
            if s["part"] == "tail":
                utterances[-1].append(s)
            else:
                utterances.append([s])
    out: list[RefWord] = []
    for clip_index, parts in enumerate(utterances):
        tokens = normalise(" ".join(p["text"] for p in parts)).split()
        pause_at = len(normalise(parts[0]["text"]).split()) if len(parts) == 2 else None
        for i, t in enumerate(tokens):
            out.append(RefWord(t, parts[0]["clip"], clip_index, i, len(tokens), pause_at))
    return out


def texts_of(meta: dict) -> dict[str, str]:
    """Each clip's whole text (a paused clip's head and tail joined)."""
    texts: dict[str, list[str]] = {}
    for s in meta["segments"]:
        if s["kind"] == "speech":
            texts.setdefault(s["clip"], []).append(s["text"])
    return {name: " ".join(parts) for name, parts in texts.items()}


def category(w: RefWord, final_words: int | None = None) -> str:
    """Where a reference word lies; ``final_words``: the length of the streamed final it came
    out in (None: unknown, the clip's length stands in)."""
    if w.clip_index == 0:
        return CATEGORIES[0]
    if w.pause_at is not None and w.index in (w.pause_at - 1, w.pause_at):
        return CATEGORIES[1]
    if (w.clip_words if final_words is None else final_words) <= SHORT_WORDS:
        return CATEGORIES[2]
    if w.index < ONSET_WORDS:
        return CATEGORIES[3]
    if w.index >= w.clip_words - END_WORDS:
        return CATEGORIES[4]
    return CATEGORIES[5]


@dataclass
class WordError:
    kind: str  # substitution, deletion, insertion
    ref_index: int  # the reference token it is charged to (an insertion: the one before it)
    ref: str
    hyp: str
    hyp_index: int  # its hypothesis token (a deletion: the hypothesis token after the gap)


def word_errors(reference: list[str], hypothesis: str) -> list[WordError]:
    """jiwer's alignment of the normalised hypothesis to the reference tokens, one entry per
    wrong reference token (and per inserted token)."""
    import jiwer

    hyp = normalise(hypothesis).split()
    if not hyp:
        return [WordError("deletion", i, w, "", 0) for i, w in enumerate(reference)]
    errors = []
    out = jiwer.process_words(" ".join(reference), " ".join(hyp))
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            continue
        r0, r1, h0, h1 = (
            chunk.ref_start_idx,
            chunk.ref_end_idx,
            chunk.hyp_start_idx,
            chunk.hyp_end_idx,
        )
        if chunk.type == "substitute":
            for k in range(r1 - r0):
                errors.append(
                    WordError("substitution", r0 + k, reference[r0 + k], hyp[h0 + k], h0 + k)
                )
        elif chunk.type == "delete":
            for k in range(r1 - r0):
                errors.append(WordError("deletion", r0 + k, reference[r0 + k], "", h0))
        else:
            at = max(0, r0 - 1)
            for k in range(h1 - h0):
                errors.append(WordError("insertion", at, "", hyp[h0 + k], h0 + k))
    return errors


def _clip_errors(text: str, hypothesis: str | None) -> set[int] | None:
    """The reference tokens of one clip that ``hypothesis`` got wrong (None: not measured)."""
    if hypothesis is None:
        return None
    return {e.ref_index for e in word_errors(normalise(text).split(), hypothesis)}


def _context(words: list[str], i: int, span: int = 3) -> str:
    return (
        " ".join(words[max(0, i - span) : i])
        + f" [{words[i]}] "
        + " ".join(words[i + 1 : i + 1 + span])
    )


def _ref_to_hyp(reference: list[str], hypothesis: str) -> list[int]:
    """For each reference token, the hypothesis token it came out as (a deleted one: the
    hypothesis token after the gap, or the last one)."""
    import jiwer

    hyp = normalise(hypothesis).split()
    if not hyp:
        return [0] * len(reference)
    out = [0] * len(reference)
    for chunk in jiwer.process_words(" ".join(reference), " ".join(hyp)).alignments[0]:
        for k in range(chunk.ref_end_idx - chunk.ref_start_idx):
            if chunk.type == "delete":
                out[chunk.ref_start_idx + k] = min(chunk.hyp_start_idx, len(hyp) - 1)
            else:
                out[chunk.ref_start_idx + k] = chunk.hyp_start_idx + k
    return out


def _final_of_token(streamed: str, finals: list[str] | None) -> list[int] | None:
    """Each hypothesis token's final (None: the finals' tokens do not add up to the
    transcript's, e.g. a number normalised across two finals)."""
    if finals is None:
        return None
    owner = [i for i, text in enumerate(finals) for _ in normalise(text).split()]
    return owner if len(owner) == len(normalise(streamed).split()) else None


def diagnose_stream(
    meta: dict,
    streamed: str,
    offline: str | None = None,
    one_clip: dict[str, str] | None = None,
    clip_texts: dict[str, str] | None = None,
    finals: list[str] | None = None,
) -> tuple[list[dict], Counter]:
    """Every streamed error of one stream with its category, and whether the same reference
    word was also wrong offline (whole stream), with one socket per clip, and whether it is
    the first or last word of a final (``finals``: their texts, in order); and the reference
    words per category."""
    ref = reference_words(meta)
    tokens = [w.word for w in ref]
    owner = _final_of_token(streamed, finals)
    sizes = Counter(owner or [])

    def final_words(hyp_index: int) -> int | None:
        return None if not owner else sizes[owner[min(hyp_index, len(owner) - 1)]]

    def at_edge(e: WordError) -> bool | None:
        if not owner:
            return None
        i = min(e.hyp_index, len(owner) - 1)
        first = i == 0 or owner[i - 1] != owner[i]
        last = i == len(owner) - 1 or owner[i + 1] != owner[i]
        if e.kind == "deletion":  # lost between hyp_index - 1 and hyp_index
            return first or e.hyp_index >= len(owner)
        return first or last

    mapped = _ref_to_hyp(tokens, streamed)
    words = Counter(category(w, final_words(h)) for w, h in zip(ref, mapped, strict=True))
    offline_wrong = None if offline is None else {e.ref_index for e in word_errors(tokens, offline)}
    one_clip_wrong: dict[str, set[int] | None] = {}
    for name in {w.clip for w in ref}:
        text = (clip_texts or {}).get(name)
        hyp = (one_clip or {}).get(name)
        one_clip_wrong[name] = None if text is None else _clip_errors(text, hyp)
    out = []
    for e in word_errors(tokens, streamed):
        w = ref[e.ref_index]
        in_clip = one_clip_wrong.get(w.clip)
        out.append(
            {
                "kind": e.kind,
                "ref": e.ref,
                "hyp": e.hyp,
                "clip": w.clip,
                "category": category(w, final_words(e.hyp_index)),
                "context": _context(tokens, e.ref_index),
                "offline_also": None if offline_wrong is None else e.ref_index in offline_wrong,
                "one_clip_also": None if in_clip is None else w.index in in_clip,
                "final_edge": at_edge(e),
            }
        )
    return out, words


def segmentation(meta: dict, finals: list[dict]) -> Counter:
    """How the server cut the stream into finals, against the timeline: each speech part (a
    clip, or one half of a paused clip) in exactly one final of its own, split over several
    finals (the VAD closed an utterance inside it), or sharing a final with another part
    across a gap (two utterances in one final) or across an in-sentence pause (the pause did
    not end the utterance). A final covers a part when its audio (first segment's start to
    last segment's end) overlaps the part's voiced extent by 100 ms or more."""
    parts = [s for s in meta["segments"] if s["kind"] == "speech"]
    spans = [(f["start_s"], f["end_s"]) for f in finals if f.get("end_s") is not None]

    def covers(span: tuple[float, float], part: dict) -> bool:
        lo, hi = max(span[0], part["voiced_start_s"]), min(span[1], part["voiced_end_s"])
        return hi - lo >= 0.1

    counts: Counter = Counter(finals=len(finals), speech_parts=len(parts))
    for i, part in enumerate(parts):
        mine = [span for span in spans if covers(span, part)]
        shared = {
            j for span in mine for j, other in enumerate(parts) if j != i and covers(span, other)
        }
        if not mine:
            counts["part in no final"] += 1
        elif len(mine) > 1:
            counts["part split over several finals"] += 1
        elif not shared:
            counts["part in one final of its own"] += 1
        for j in shared:
            if j == i + 1:  # count each neighbouring pair once
                across_pause = part["part"] == "head" and parts[j]["part"] == "tail"
                counts[f"parts in one final across {'a pause' if across_pause else 'a gap'}"] += 1
    return counts


def diagnose(report: dict, one_clip_report: dict | None = None) -> dict:
    """Per level of a bench-stt --conversation report (or a --corpus run over built streams):
    error counts by category (with how many were also wrong offline, with one socket per clip
    and at a final's edge) and examples. ``one_clip_report``: take the one-socket-per-clip
    transcripts from that bench-stt report instead (its one_clip_levels, or its levels)."""
    if "conversation" in report:
        streams_dir, names = Path(report["conversation"]["dir"]), report["conversation"]["streams"]
    else:
        streams_dir, names = Path(report["corpus"]), report["files"]
    metas = {name: json.loads((streams_dir / f"{name}.json").read_text()) for name in names}
    clip_texts = {name: text for meta in metas.values() for name, text in texts_of(meta).items()}
    offline = report.get("offline_transcripts") or {}
    source = one_clip_report or report
    one_clip_rows = source.get("one_clip_levels") or (source["levels"] if one_clip_report else [])
    one_clip_by_level = {r["sessions"]: r["transcripts"] for r in one_clip_rows}
    out = {}
    for row in report["levels"]:
        n = row["sessions"]
        one_clip = one_clip_by_level.get(n) or next(iter(one_clip_by_level.values()), None)
        errors, cuts, words = [], Counter(), Counter()
        for name, streamed in row["transcripts"].items():
            finals = [f["text"] for f in row.get("finals_detail", {}).get(name, [])]
            found, counted = diagnose_stream(
                metas[name], streamed, offline.get(name), one_clip, clip_texts, finals or None
            )
            errors += [{"stream": name, **e} for e in found]
            words += counted
            cuts += segmentation(metas[name], row.get("finals_detail", {}).get(name, []))
        by_category = {}
        for cat in CATEGORIES:
            these = [e for e in errors if e["category"] == cat]
            by_category[cat] = {
                "words": words[cat],
                "errors": len(these),
                "by_kind": dict(Counter(e["kind"] for e in these)),
                # None: not measured (no offline run, no one-clip run, no finals)
                **{
                    key: None
                    if errors and all(e[key] is None for e in errors)
                    else sum(bool(e[key]) for e in these)
                    for key in ("offline_also", "one_clip_also", "final_edge")
                },
                "examples": [
                    f"{e['stream']} {e['clip']}: {e['kind']} {e['ref'] or '-'} -> {e['hyp'] or '-'}"
                    f" ({e['context']})"
                    for e in these
                ],
            }
        out[n] = {
            "reference_words": sum(len(reference_words(m)) for m in metas.values()),
            "errors": len(errors),
            "categories": by_category,
            "segmentation": dict(cuts),
        }
    return out


def print_diagnosis(diagnosis: dict, examples: int = 6) -> None:
    for n, d in diagnosis.items():
        print(f"\n{n} concurrent stream(s): {d['errors']} errors / {d['reference_words']} words")
        print(
            "| where | reference words | errors | sub / del / ins | also offline (whole stream) | "
            "also one clip per socket | first or last word of a final |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for cat, c in d["categories"].items():
            k = c["by_kind"]
            rate = f"{100 * c['errors'] / c['words']:.1f} %" if c["words"] else "–"
            also = [
                "–" if c[key] is None else str(c[key])
                for key in ("offline_also", "one_clip_also", "final_edge")
            ]
            print(
                f"| {cat} | {c['words']} | {c['errors']} ({rate}) | {k.get('substitution', 0)} / "
                f"{k.get('deletion', 0)} / {k.get('insertion', 0)} | {' | '.join(also)} |"
            )
        for cat, c in d["categories"].items():
            for line in c["examples"][:examples]:
                print(f"  {cat}: {line}")
        print("segmentation:", json.dumps(d["segmentation"]))


# -- end of turn ------------------------------------------------------------------------------
SENTENCE_END = (".", "?", "!")
COMPLETE_SOURCES = ("fleurs",)  # FLEURS clips are whole sentences (its text has no punctuation)


def ends_a_sentence(part: dict) -> bool | None:
    """True: the speech part ends a sentence; False: it stops inside one (a pause's head, a
    clause end with a comma); None: not known (a LibriVox utterance, cut by its aligner)."""
    text = part["text"].rstrip()
    if part["part"] == "head":
        return text.endswith(SENTENCE_END)
    if text.endswith(SENTENCE_END) or part["clip"].startswith(COMPLETE_SOURCES):
        return True
    if text.endswith((",", ";", ":")):
        return False
    return None


def turn_ends(meta: dict, turns: list[dict], finals: list[dict]) -> dict:
    """How a stream's end-of-turn events fall on its timeline. ``turns``: each with ``t`` (when
    it came, in the stream's seconds) and ``speech_end`` (the end of the turn's last speech);
    ``finals``: the stream's finals (``start_s``, ``end_s``). A turn end belongs to the speech part its
    ``speech_end`` falls in (up to the next part's start): at the part's end when no final of
    the part starts after it, else early, at a pause inside the part. Per part: whether its end
    ended the turn, after what delay from its last voiced sample, and how many came early."""
    parts = [seg for seg in meta["segments"] if seg["kind"] == "speech"]
    owned: dict[int, list[dict]] = {}
    for turn in turns:
        for i, part in enumerate(parts):
            until = parts[i + 1]["voiced_start_s"] if i + 1 < len(parts) else float("inf")
            if part["voiced_start_s"] <= turn["speech_end"] < until:
                owned.setdefault(i, []).append(turn)
                break
    out = {"unfinished": [], "finished": [], "unknown": []}
    for i, part in enumerate(parts):
        key = {True: "finished", False: "unfinished", None: "unknown"}[ends_a_sentence(part)]
        mine = owned.get(i, [])
        until = parts[i + 1]["voiced_start_s"] if i + 1 < len(parts) else float("inf")
        # the part's finals end before the next part starts (a next final's pre-roll may
        # start before it)
        starts = [f["start_s"] for f in finals if f["end_s"] is not None and f["end_s"] < until]
        at_end = [t for t in mine if not any(t["speech_end"] < s for s in starts)]
        out[key].append(
            {"clip": part["clip"], "part": part["part"], "ended": bool(at_end),
             "delay_s": round(at_end[0]["t"] - part["voiced_end_s"], 3) if at_end else None,
             "early_ends": len(mine) - len(at_end),
             "reasons": sorted({t.get("reason", "?") for t in at_end}),
             "text_end": part["text"][-30:]}
        )  # fmt: skip
    return out


def summarise_turns(per_stream: dict[str, dict]) -> dict:
    """The issue's measures over all streams: false ends (at a pause inside a sentence, and
    early ends at pauses inside any part) and the delay (p50, p95) from a finished sentence's
    last voiced sample to its turn end."""
    from scripts.bench.stats import percentile

    def rows(key: str) -> list[dict]:
        return [r for d in per_stream.values() for r in d[key]]

    heads = [r for r in rows("unfinished") if r["part"] == "head"]
    clause_ends = [r for r in rows("unfinished") if r["part"] != "head"]
    finished = rows("finished")
    delays = [r["delay_s"] for r in finished if r["delay_s"] is not None]
    every = rows("unfinished") + finished + rows("unknown")
    return {
        "pauses_inside_a_sentence": len(heads),
        "false_turn_ends": sum(r["ended"] for r in heads),
        "early_ends_inside_parts": sum(r["early_ends"] for r in every),
        "clause_ends": len(clause_ends),
        "clause_ends_that_ended_the_turn": sum(r["ended"] for r in clause_ends),
        "finished_sentences": len(finished),
        "finished_without_turn_end": sum(not r["ended"] for r in finished),
        "finished_by_timeout": sum("timeout" in r["reasons"] for r in finished),
        "delay_p50_s": percentile(delays, 50),
        "delay_p95_s": percentile(delays, 95),
        "unknown_ends": len(rows("unknown")),
        "unknown_that_ended_the_turn": sum(r["ended"] for r in rows("unknown")),
    }


def score_turns(report: dict) -> dict:
    """Per level of a bench-stt (or replay) report with ``turns_detail``: ``summarise_turns``."""
    if "conversation" in report:
        streams_dir, names = Path(report["conversation"]["dir"]), report["conversation"]["streams"]
    else:
        streams_dir, names = Path(report["corpus"]), report["files"]
    metas = {name: json.loads((streams_dir / f"{name}.json").read_text()) for name in names}
    out = {}
    for row in report["levels"]:
        per_stream = {
            name: turn_ends(metas[name], turns, row["finals_detail"][name])
            for name, turns in row.get("turns_detail", {}).items()
        }
        out[row["sessions"]] = {"summary": summarise_turns(per_stream), "streams": per_stream}
    return out


def print_turns(scored: dict) -> None:
    for n, d in scored.items():
        print(f"\nend of turn, {n} concurrent stream(s):", json.dumps(d["summary"]))
        for name, stream in d["streams"].items():
            for key in ("unfinished", "finished"):
                for r in stream[key]:
                    bad = (key == "unfinished") == r["ended"] or r["early_ends"]
                    if bad or r["delay_s"] is None:
                        print(f"  {name} {key}: {r}")


def turn_scores(streams_dir: Path, tail_s: float, thresholds: tuple[float, ...]) -> dict:
    """Smart Turn's P(complete) for each speech part of built streams, offline: the turn from
    0.5 s before its first voiced sample (a tail's turn starts at its head) to ``tail_s`` after
    the part's last voiced sample. Counts per threshold: heads (unfinished) and finished parts
    above it."""
    from speech_common.turn import PRE_SPEECH_MS, SmartTurn

    model = SmartTurn()
    scores: dict[str, list] = {"head": [], "finished": []}
    call_s: list[float] = []  # each call's time (features + model, batch 1, one thread)
    for meta_path in sorted(streams_dir.glob("conv-*.json")):
        meta = json.loads(meta_path.read_text())
        audio = read_pcm16(meta_path.with_suffix(".wav")).astype(np.float32) / 32768.0
        parts = [seg for seg in meta["segments"] if seg["kind"] == "speech"]
        for i, part in enumerate(parts):
            complete = ends_a_sentence(part)
            key = "head" if part["part"] == "head" and not complete else "finished"
            if complete is None or (complete is False and part["part"] != "head"):
                continue  # neither: a clause end at a clip's end, a LibriVox utterance
            first = parts[i - 1] if part["part"] == "tail" else part
            lo = round((first["voiced_start_s"] - PRE_SPEECH_MS / 1000) * RATE)
            hi = round((part["voiced_end_s"] + tail_s) * RATE)
            t0 = time.perf_counter()
            p = float(model.probabilities([audio[max(lo, 0) : hi]])[0])
            call_s.append(time.perf_counter() - t0)
            scores[key].append({"clip": part["clip"], "text_end": part["text"][-25:], "p": p})
    return {
        "scores": scores,
        "above": {
            t: {k: sum(r["p"] > t for r in v) for k, v in scores.items()} for t in thresholds
        },
        "count": {k: len(v) for k, v in scores.items()},
        "call_ms_p50": round(float(np.median(call_s)) * 1000, 1) if call_s else None,
    }


# -- command line ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the streams (WAV + JSON timeline)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT)
    b.add_argument("--streams", type=int, default=STREAMS)
    b.add_argument("--seed", type=int, default=SEED)
    b.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        default=list(SOURCES),
        help="folders of clips (default: samples/real samples/real_speakers)",
    )
    b.add_argument("--no-pauses", action="store_true", help="no pause inside a sentence")
    b.add_argument(
        "--hesitations", action="store_true", help="pauses after a function word (end of turn)"
    )
    d = sub.add_parser("diagnose", help="classify the errors of a bench-stt --conversation run")
    d.add_argument("report", type=Path)
    d.add_argument("--examples", type=int, default=6)
    d.add_argument(
        "--one-clip",
        type=Path,
        help="a bench-stt report whose transcripts are the clips one socket per clip",
    )
    t = sub.add_parser("turns", help="score the end_of_turn messages of a bench-stt/replay run")
    t.add_argument("report", type=Path)
    ts = sub.add_parser("turn-scores", help="Smart Turn's score of each part, offline")
    ts.add_argument("dir", type=Path)
    ts.add_argument("--tail", type=float, default=0.2, help="seconds after the last voiced sample")
    c = sub.add_parser("cuts", help="find each clip's in-sentence cut point (prints JSON)")
    c.add_argument("--hesitations", action="store_true", help="after a function word instead")
    c.add_argument("--sources", type=Path, nargs="+", default=list(SOURCES))
    args = parser.parse_args()
    if args.command == "build":
        paths = build(
            args.out, args.streams, args.seed, args.sources, not args.no_pauses, args.hesitations
        )
        for path in paths:
            meta = json.loads(path.with_suffix(".json").read_text())
            kinds = Counter(s["kind"] for s in meta["segments"])
            print(
                f"{path}: {meta['duration_s']:.1f} s, {len(meta['text'].split())} words, "
                f"{kinds['pause']} in-sentence pauses, speakers: {', '.join(meta['speakers'])}"
            )
    elif args.command == "turn-scores":
        result = turn_scores(args.dir, args.tail, (0.5, 0.7, 0.9, 0.97))
        for key, rows in result["scores"].items():
            print(key, " ".join(f"{r['p']:.3f}" for r in sorted(rows, key=lambda r: r["p"])))
        print("of", json.dumps(result["count"]), "above:", json.dumps(result["above"]))
        print(f"Smart Turn, one call (batch 1, one thread): p50 {result['call_ms_p50']} ms")
    elif args.command == "turns":
        print_turns(score_turns(json.loads(args.report.read_text())))
    elif args.command == "diagnose":
        one_clip = json.loads(args.one_clip.read_text()) if args.one_clip else None
        print_diagnosis(diagnose(json.loads(args.report.read_text()), one_clip), args.examples)
    else:
        print(json.dumps(find_cuts(args.hesitations, tuple(args.sources)), indent=1))


if __name__ == "__main__":
    main()
