"""scripts/bench/wer.py: the one WER (jiwer over Whisper's English normaliser)."""

from __future__ import annotations

import pytest

from scripts.bench.wer import normalise, wer


def test_whisper_normalisation() -> None:
    assert normalise("Call me at nine, O'Brien!") == normalise("call me at 9 o'brien")
    assert normalise("Mr. Smith paid 3.5 dollars") == "mister smith paid $3.5"


@pytest.mark.parametrize(
    "text", ["natural there for...", "natural there for…", "natural there for."]
)
def test_a_trailing_ellipsis_is_not_a_word(text: str) -> None:
    assert normalise(text) == "natural there for"
    assert wer("it was natural there for", "it was " + text) == 0.0


def test_corpus_wer_counts_errors_over_all_reference_words() -> None:
    assert wer("a b c d", "a b x d") == 0.25
    assert wer(["a b", "c d"], ["a b", "c"]) == 0.25
    assert wer("a b", "") == 1.0
    with pytest.raises(ValueError):
        wer("", "a")
