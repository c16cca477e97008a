"""Two systems' transcripts of the same clips, compared clip by clip: where their errors differ,
the gap in WER points, the gap with compounds counted as one word however they are spaced, and
how sure the gap is (a paired bootstrap over the clips: the clips are the sample, so a gap made
by two or three clips is not called a difference).

    python scripts/bench/paired.py bench_results/replay.json   # clips one per socket vs offline
    python scripts/bench/paired.py bench_results/replay.json --under samples/real
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts import SAMPLES_DIR
from scripts.bench.conversation import SEED
from scripts.bench.wer import errors, normalise

RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Clip:
    name: str
    words: int  # reference words, normalised
    a: int  # errors of system a
    b: int
    a_respaced: int  # ... with compounds respaced as the reference spaces them
    b_respaced: int


@dataclass(frozen=True)
class Paired:
    clips: list[Clip]
    interval: tuple[float, float]  # of the gap (a - b), WER points, CONFIDENCE bootstrap

    @property
    def words(self) -> int:
        return sum(c.words for c in self.clips)

    def points(self, respaced: bool = False) -> tuple[float, float]:
        """System a's and b's WER over all the clips, in points (percent)."""
        a = sum(c.a_respaced if respaced else c.a for c in self.clips)
        b = sum(c.b_respaced if respaced else c.b for c in self.clips)
        return 100 * a / self.words, 100 * b / self.words

    def gap(self, respaced: bool = False) -> float:
        a, b = self.points(respaced)
        return a - b

    @property
    def differing(self) -> list[Clip]:
        return [c for c in self.clips if c.a != c.b]


def compare(
    references: Mapping[str, str],
    a: Mapping[str, str],
    b: Mapping[str, str],
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Paired:
    """Clips named in all three; the interval resamples clips with replacement (seeded)."""
    names = [n for n in references if n in a and n in b]
    if not names:
        raise ValueError("no clip has a reference and both transcripts")
    clips = [
        Clip(
            n,
            len(normalise(references[n]).split()),
            errors(references[n], a[n]),
            errors(references[n], b[n]),
            errors(references[n], a[n], respaced=True),
            errors(references[n], b[n], respaced=True),
        )
        for n in names
    ]
    words = np.array([c.words for c in clips], dtype=float)
    diff = np.array([c.a - c.b for c in clips], dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(clips), size=(resamples, len(clips)))
    gaps = 100 * diff[picks].sum(axis=1) / words[picks].sum(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(gaps, [tail, 1 - tail])
    return Paired(clips, (float(low), float(high)))


def print_paired(paired: Paired, a: str, b: str) -> None:
    (pa, pb), (ra, rb) = paired.points(), paired.points(respaced=True)
    low, high = paired.interval
    print(
        f"{a} vs {b}, clip by clip ({len(paired.clips)} clips, {paired.words} words): "
        f"{pa:.2f} % vs {pb:.2f} %, gap {paired.gap():+.2f} points "
        f"({CONFIDENCE:.0%} interval {low:+.2f} to {high:+.2f}); "
        f"compounds as one word: {ra:.2f} % vs {rb:.2f} %, gap {paired.gap(respaced=True):+.2f}"
    )
    for c in paired.differing:
        spacing = "" if (c.a_respaced, c.b_respaced) == (c.a, c.b) else (
            f" (compounds as one word: {c.a_respaced} / {c.b_respaced})"
        )  # fmt: skip
        print(f"  {c.name}: {c.a} / {c.b} errors{spacing}")


def one_clip_vs_offline(
    report: dict, samples: Path = SAMPLES_DIR, under: Path | None = None
) -> Paired | None:
    """A bench-stt or replay report's clips one per socket against offline Whisper on the same
    clips (None when the report holds no offline transcripts of them); ``under``: only the
    clips whose WAV lies in that folder."""
    names = report.get("one_clip_files") or []
    if under is not None:
        names = [n for n in names if (under / f"{n}.wav").exists()]
    offline = report.get("offline_transcripts") or {}
    levels = report.get("one_clip_levels") or []
    if not names or not levels or not all(n in offline for n in names):
        return None
    return compare(references(names, samples), levels[0]["transcripts"], offline)


def references(names: list[str], samples: Path = SAMPLES_DIR) -> dict[str, str]:
    """The reference texts of clips named as the reports name them (a WAV's stem under
    ``samples/``, its text in the JSON beside it)."""
    found = {p.stem: p for p in samples.rglob("*.wav") if p.stem in set(names)}
    missing = [n for n in names if n not in found]
    if missing:
        raise FileNotFoundError(f"no clip under {samples} named {missing}")
    return {n: json.loads(found[n].with_suffix(".json").read_text())["text"] for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="bench-stt's or replay.py's JSON")
    parser.add_argument("--under", type=Path, help="only the clips whose WAV is in this folder")
    args = parser.parse_args()
    paired = one_clip_vs_offline(json.loads(args.report.read_text()), under=args.under)
    if paired is None:
        parser.error("the report holds no clips one per socket with offline transcripts")
    print_paired(paired, "one clip per socket", "offline")


if __name__ == "__main__":
    main()
