"""scripts/bench/wer.py: the one WER (jiwer over Whisper's English normaliser)."""

from __future__ import annotations

import pytest

from scripts.bench.wer import errors, normalise, repeated_phrases, respace, wer


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


def test_a_phrase_said_twice_counts_only_when_the_reference_does_not_say_it_twice() -> None:
    loop = "And so my fellow America, and so my fellow America."
    assert repeated_phrases(loop, "And so, my fellow Americans") == {
        ("and", "so", "my"),
        ("so", "my", "fellow"),
        ("my", "fellow", "america"),
    }
    kennedy = "ask not what your country can do for you, ask what you can do for your country"
    assert repeated_phrases(kennedy, kennedy) == set()
    assert repeated_phrases("No, no, no.", "") == set()  # one 3-word phrase, said once
    assert repeated_phrases("now now now now", "now") == {("now", "now", "now")}


@pytest.mark.parametrize(
    ("reference", "hypothesis", "respaced"),
    [
        ("before the woodcutters of", "before the wood cutters of", "before the woodcutters of"),
        ("fasten your seat belts we", "fasten your seatbelts we", "fasten your seat belts we"),
        # a pair the reference holds as it is stays, though its join is a reference word too
        (
            "wood blocks and woodblocks",
            "wood blocks and wood blocks",
            "wood blocks and wood blocks",
        ),
        # a joined word the reference also holds alone is not split
        ("a seatbelts and seat belts", "a seatbelts", "a seatbelts"),
        # never a letter changed: a wrong word stays wrong
        ("the letterpress", "the letter pressed", "the letter pressed"),
        ("", "a b", "a b"),
    ],
)
def test_respace_changes_only_the_spacing_of_a_compound(
    reference: str, hypothesis: str, respaced: str
) -> None:
    assert respace(reference, hypothesis) == respaced


def test_errors_count_a_compound_spelt_open_as_two_errors_unless_respaced() -> None:
    reference = "Composed to form letterpress."
    assert errors(reference, "composed to form letter press") == 2
    assert errors(reference, "composed to form letter press", respaced=True) == 0
    assert errors(reference, "composed to form letter dress", respaced=True) == 2
    assert errors(reference, "") == 4
    with pytest.raises(ValueError):
        errors("", "a")
