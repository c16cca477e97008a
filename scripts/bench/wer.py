"""The one word error rate: jiwer over Whisper's English normaliser (as shipped in transformers,
without its British-to-American spelling map), for benchmarks, tests and the smoke test alike."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import jiwer

EMPTY = "<empty>"  # an empty hypothesis is all deletions, not a jiwer error


@cache
def _normaliser():
    # transformers imports in under a second without torch; only this module is loaded.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def normalise(text: str) -> str:
    """Whisper's normalisation: lower case, no punctuation, numbers as digits, fillers dropped.

    Whisper's normaliser keeps a "." that ends the text (it only strips one followed by a
    non-digit), so a transcript ending in "..." gained a word "."; tokens that are only dots
    are dropped (a streamed final ending mid-sentence was charged an insertion for it)."""
    return " ".join(t for t in _normaliser()(text).split() if t.strip("."))


def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Normalised WER; lists are scored as one corpus (total errors / total reference words)."""
    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    normal_refs = [normalise(r) for r in refs]
    if not any(normal_refs):
        raise ValueError("empty reference text")
    return float(jiwer.wer(normal_refs, [normalise(h) or EMPTY for h in hyps]))
