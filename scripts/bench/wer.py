"""The one word error rate: jiwer over Whisper's English normaliser (as shipped in transformers,
without its British-to-American spelling map), for benchmarks, tests and the smoke test alike."""

from __future__ import annotations

from collections import Counter
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


def respace(reference: str, hypothesis: str) -> str:
    """``hypothesis`` with each compound spaced as ``reference`` spaces it (both normalised):
    two neighbouring words that the reference writes as one ("wood cutters" for "woodcutters")
    are joined, one word that the reference writes as two neighbours ("seatbelts" for "seat
    belts") is split. Only the spacing changes, never a letter: what NIST's scoring does with a
    GLM's alternate spellings, for the one case Whisper's normaliser leaves open."""
    ref = reference.split()
    ref_words = set(ref)
    ref_pairs = {a + b: (a, b) for a, b in zip(ref, ref[1:], strict=False)} if ref else {}
    adjacent = set(zip(ref, ref[1:], strict=False))
    words = hypothesis.split()
    out: list[str] = []
    i = 0
    while i < len(words):
        pair = tuple(words[i : i + 2])
        if len(pair) == 2 and "".join(pair) in ref_words and pair not in adjacent:
            out.append("".join(pair))
            i += 2
            continue
        word = words[i]
        out.extend(ref_pairs[word] if word in ref_pairs and word not in ref_words else (word,))
        i += 1
    return " ".join(out)


def errors(reference: str, hypothesis: str, *, respaced: bool = False) -> int:
    """Word errors (substitutions + deletions + insertions) of one normalised pair; ``respaced``:
    after ``respace``, so a compound spelt open or closed is one word either way."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref:
        raise ValueError("empty reference text")
    if respaced:
        hyp = respace(ref, hyp)
    out = jiwer.process_words(ref, hyp or EMPTY)
    return out.substitutions + out.deletions + out.insertions


REPEAT_WORDS = 3  # the bar: no final holds a phrase of 3 words or more twice


def repeated_phrases(text: str, reference: str, n: int = REPEAT_WORDS) -> set[tuple[str, ...]]:
    """Phrases of ``n`` words (normalised) that ``text`` holds more than once and ``reference``
    does not: a decoding loop, where the speaker did not repeat himself ("ask not what your
    country can do for you, ask what you can do for your country" repeats "can do for")."""

    def repeated(words: list[str]) -> set[tuple[str, ...]]:
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        return {g for g, count in grams.items() if count > 1}

    return repeated(normalise(text).split()) - repeated(normalise(reference).split())
