"""TextBuffer: sentence-aware chunking with a word-count fallback and a character cap."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orpheus_tts.prompt import EMOTIVE_TAGS
from speech_common.text_buffer import TextBuffer


def _feed_words(buffer: TextBuffer, words: list[str]) -> list[str]:
    chunks: list[str] = []
    for word in words:
        chunks.extend(buffer.push(word))
    return chunks


def test_sentence_released_when_next_one_starts() -> None:
    buffer = TextBuffer(buffer_size=50)
    assert _feed_words(buffer, "Hello there, my friend.".split()) == []
    # The period alone is not enough: "Mr." or "3.5" also carry one. The next word decides.
    assert buffer.push("How") == ["Hello there, my friend."]
    assert buffer.pending_words == ("How",)
    assert buffer.flush() == ["How"]
    assert buffer.flush() == []


def test_abbreviations_and_decimals_do_not_end_sentences() -> None:
    buffer = TextBuffer(buffer_size=50)
    chunks = _feed_words(buffer, "Mr. Smith paid 3.5 dollars. Then he left".split())
    assert chunks == ["Mr. Smith paid 3.5 dollars."]
    assert buffer.flush() == ["Then he left"]


def test_buffer_size_fallback_without_sentence_end() -> None:
    buffer = TextBuffer(buffer_size=4)
    words = "one two three four five six seven".split()
    released = []
    for i, word in enumerate(words):
        released.append(buffer.push(word))
        assert len(buffer.pending_words) < 4, i
    assert released[3] == ["one two three four"]
    assert buffer.flush() == ["five six seven"]


def test_several_sentences_in_one_frame_are_packed() -> None:
    buffer = TextBuffer(buffer_size=100)
    chunks = buffer.push("Hi. I am here. You are there. And")
    assert chunks == ["Hi. I am here. You are there."]
    assert buffer.flush() == ["And"]


def test_sentences_not_packed_beyond_char_cap() -> None:
    buffer = TextBuffer(buffer_size=100, max_chars=20)
    assert buffer.push("First sentence here. Second one is here. Third") == [
        "First sentence here.",
        "Second one is here.",
    ]
    assert buffer.flush() == ["Third"]


def test_flush_releases_open_sentences_together() -> None:
    buffer = TextBuffer(buffer_size=100)
    assert _feed_words(buffer, ["Bye."]) == []
    assert buffer.flush() == ["Bye."]


def test_max_chars_never_exceeded_and_words_kept_whole() -> None:
    buffer = TextBuffer(buffer_size=1000, max_chars=30)
    text = " ".join(["word"] * 40) + " <laugh> " + " ".join(["more"] * 20)
    chunks = buffer.push(text) + buffer.flush()
    assert all(len(c) <= 30 for c in chunks)
    assert " ".join(chunks).split() == text.split()
    assert any("<laugh>" in c.split() for c in chunks)


def test_prefers_clause_break_when_cutting() -> None:
    buffer = TextBuffer(buffer_size=1000, max_chars=40)
    chunks = buffer.push("aaaa bbbb cccc dddd eeee, ffff gggg hhhh iiii") + buffer.flush()
    assert chunks[0] == "aaaa bbbb cccc dddd eeee,"


def test_overlong_single_word_is_cut_to_the_chunk_limit() -> None:
    buffer = TextBuffer(buffer_size=3, max_chars=10)
    long_word = "x" * 25
    chunks = _feed_words(buffer, ["a", long_word, "b"]) + buffer.flush()
    assert chunks == ["a", "x" * 10, "x" * 10, "x" * 5, "b"]


def test_emotive_tags_survive_sentence_splitting() -> None:
    buffer = TextBuffer(buffer_size=50)
    chunks = _feed_words(buffer, "That is funny. <laugh> Anyway, <sigh> we go.".split())
    chunks += buffer.flush()
    tags = [w for c in chunks for w in c.split() if w in EMOTIVE_TAGS]
    assert tags == ["<laugh>", "<sigh>"]


def test_punctuation_and_clitic_frames_join_their_word() -> None:
    def spoken(frames: list[str]) -> str:
        buffer = TextBuffer(buffer_size=10)
        return " ".join([c for f in frames for c in buffer.push(f)] + buffer.flush())

    frames = ["Hello", "!", "I", "'m", "here", ",", "it", "is", "n't", "done", "..."]
    assert spoken(frames) == "Hello! I'm here, it isn't done..."
    # "(" opens: a word of its own; tags stay whole.
    assert spoken(["He", "said", "(", "quietly", ")", "<laugh>"]) == "He said ( quietly) <laugh>"


def test_llm_token_deltas_keep_words_and_numbers_whole() -> None:
    """An LLM's raw deltas through the published protocol (issue: broken words, "3 . 5")."""
    deltas = ["Hello", "!", " I", "'m", " unbeliev", "ably", " happy", " to", " help", ".",
              " The", " total", " is", " 3", ".", "5", " dollars", ",", " right", "?"]  # fmt: skip
    buffer = TextBuffer(buffer_size=10)
    chunks = [c for d in deltas for c in buffer.push(d)] + buffer.flush()
    assert (
        " ".join(chunks)
        == "Hello! I'm unbelievably happy to help. The total is 3.5 dollars, right?"
    )
    assert "unbelievably" in " ".join(chunks[:2]) and chunks[-1].endswith("3.5 dollars, right?")


def test_whitespace_only_frames_and_empty_flush() -> None:
    buffer = TextBuffer()
    assert buffer.push("   ") == []
    assert buffer.push("") == []
    assert buffer.flush() == []


@pytest.mark.parametrize("bad", [{"buffer_size": 0}, {"max_chars": 0}])
def test_rejects_nonsense_limits(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        TextBuffer(**bad)


def test_large_frame_segments_quickly() -> None:
    # A frame at the session's size limit must not stall the event loop.
    buffer = TextBuffer(buffer_size=10)
    frame = ("It costs 3.5 dollars. Dr. No said so! Really? Yes... " * 50)[:4096]
    start = time.perf_counter()
    chunks = buffer.push(frame) + buffer.flush()
    elapsed = time.perf_counter() - start
    assert " ".join(chunks).split() == frame.split()
    assert elapsed < 0.5, elapsed


_WORD_ALPHABET = st.sampled_from(list("abcXYZ019.,!?;:'\"()-<>…") + ["é", "ß", "中"])
_WORDS = st.lists(
    st.one_of(
        st.text(_WORD_ALPHABET, min_size=1, max_size=12),
        st.sampled_from(sorted(EMOTIVE_TAGS) + ["Mr.", "Dr.", "3.5", "e.g.", "U.S.", "end."]),
    ),
    max_size=120,
)


def _continues(word: str) -> bool:
    from speech_common.text_buffer import _CONTINUES_WORD

    return bool(_CONTINUES_WORD.match(word))


@st.composite
def _framed_text(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """Words plus an arbitrary grouping of them into frames, in one of the two ways clients
    send text: word frames (no whitespace at their ends; the published client), or raw text cut
    anywhere, words included (an LLM's token deltas, with their own whitespace)."""
    words = draw(_WORDS)
    if draw(st.booleans()):  # token deltas: cut " w1 w2 ..." at arbitrary points
        text = "".join(draw(st.sampled_from([" ", "  ", "\n"])) + w for w in words)
        text = " " + text.lstrip()  # the first delta with text has its own whitespace: " w1…"
        # (A client's frames only count as raw text once one shows its own whitespace: until
        # then a frame is a word, as the published client sends them.)
        cuts = sorted(draw(st.lists(st.integers(2, max(len(text), 2)), max_size=40)))
        bounds = [0, *cuts, len(text)]
        frames = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
        return words, frames
    # Word frames. (A frame that starts like punctuation or a clitic continues the word before
    # it while that word is buffered: test_punctuation_and_clitic_frames_join_their_word; here
    # no frame starts that way.)
    words = [f"x{w}" if _continues(w) else w for w in words]
    expected = words
    frames = []
    i = 0
    while i < len(words):
        n = draw(st.integers(1, 6))
        sep = draw(st.sampled_from([" ", "  ", "\n", "\t "]))
        frames.append(sep.join(words[i : i + n]))
        i += n
    # Clients also send empty / whitespace frames.
    if draw(st.booleans()):
        frames.insert(draw(st.integers(0, len(frames))), draw(st.sampled_from(["", " "])))
    return expected, frames


@settings(max_examples=300, deadline=None)
@given(
    framed=_framed_text(),
    buffer_size=st.integers(1, 30),
    max_chars=st.integers(8, 300),
)
def test_no_word_lost_duplicated_or_reordered(
    framed: tuple[list[str], list[str]], buffer_size: int, max_chars: int
) -> None:
    words, frames = framed
    buffer = TextBuffer(buffer_size=buffer_size, max_chars=max_chars)
    chunks: list[str] = []
    for frame in frames:
        chunks.extend(buffer.push(frame))
        # The fallback bounds how long a word may wait for its sentence to end (plus the word
        # still being typed, with token deltas).
        assert len(buffer.pending_words) <= buffer_size
    chunks.extend(buffer.flush())
    # Words are kept whole, except one longer than a chunk, which is cut into chunk-size pieces.
    pieces = [w[i : i + max_chars] for w in words for i in range(0, len(w), max_chars)]
    assert [w for c in chunks for w in c.split()] == pieces
    for chunk in chunks:
        assert chunk and chunk == chunk.strip()
        assert len(chunk) <= max_chars
    assert buffer.pending_words == ()


def test_a_word_longer_than_a_chunk_is_cut_so_no_prompt_exceeds_the_limit():
    buf = TextBuffer(buffer_size=3, max_chars=280)
    chunks = buf.push("a" * 4096) + buf.flush()
    assert "".join(chunks) == "a" * 4096
    assert max(len(c) for c in chunks) <= 280
    buf = TextBuffer(buffer_size=1, max_chars=280)
    assert buf.push("<laugh>") == ["<laugh>"]  # ordinary words and tags stay whole
