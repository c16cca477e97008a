"""Sans-I/O text buffering for streaming TTS: words in, speakable chunks out.

Clients stream text word by word (an LLM's output, a transcript). Each generation should be a
whole sentence, short enough that the model does not drift, and start as soon as possible:

* A sentence is complete once the *next* one has started (one word of lookahead lets the
  segmenter tell "Mr. Smith" or "3.5" from a sentence end). Complete sentences are spoken
  at once, packed together when several arrive in one frame.
* If no sentence ends within ``buffer_size`` words, the buffered words are spoken anyway.
* No chunk is longer than ``max_chars`` characters. Words are not split (emotive tags such as
  ``<laugh>`` stay intact), except a "word" longer than ``max_chars`` on its own, which is cut
  into ``max_chars`` pieces: a generation's prompt must fit the model's context.
* ``flush()`` (the client's ``__END__``) returns everything still buffered: nothing is dropped.

Frames without whitespace of their own are words (the published client sends ``text.split()``
words) and are rejoined with single spaces, except that a frame of closing punctuation or a clitic
(``"!"``, ``","``, ``"'m"``) continues the word before it. Once a frame starts or ends with
whitespace, the session is sending raw text (an LLM's token deltas: ``"Hello"``, ``"!"``, ``" I"``,
``"'m"``, ``" unbeliev"``, ``"ably"``) and frames are concatenated verbatim from then on; the word
still being typed waits for the next frame (it looks ahead for sentence ends, but is never spoken
half-typed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

import pysbd

logger = logging.getLogger(__name__)

# Orpheus drifts on long prompts: ~280-300 characters per generation is its reliable range.
DEFAULT_MAX_CHARS = 280
DEFAULT_BUFFER_SIZE_WORDS = 10
# The segmenter runs only when a buffered word (other than the last) could end a sentence.
_SENTENCE_TERMINALS = frozenset(".!?…。！？")
# When a long run must be cut, a break after a clause mark in the chunk's second half sounds
# better than a break at the exact character limit.
_CLAUSE_MARKS = (",", ";", ":", "—", "-")
# A frame starting with closing punctuation or a clitic continues the previous word.
_CONTINUES_WORD = re.compile(r"^(?:[.,!?;:)\]}…%]|n't\b|'(?:s|m|d|re|ve|ll)\b)", re.IGNORECASE)


class TextBuffer:
    """Accumulates words and releases speakable chunks (see the module docstring)."""

    def __init__(
        self,
        buffer_size: int = DEFAULT_BUFFER_SIZE_WORDS,
        max_chars: int = DEFAULT_MAX_CHARS,
        language: str = "en",
        verbatim: bool = False,
        auto_release: bool = True,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if max_chars < 1:
            raise ValueError("max_chars must be >= 1")
        self.buffer_size = buffer_size
        self.max_chars = max_chars
        self._segmenter = pysbd.Segmenter(language=language, clean=False)
        self._words: list[str] = []
        # Frames carry their own whitespace (token deltas); from the start when the protocol
        # says so (the event protocol), else from the first frame that shows it.
        self._verbatim = verbatim
        # False: nothing is released before ``flush`` (a client that cuts its own segments).
        self.auto_release = auto_release
        self._open = ""  # verbatim mode: the word still being typed

    @property
    def pending_words(self) -> tuple[str, ...]:
        """Words received but not yet released (the one still being typed included)."""
        return tuple(self._words) + ((self._open,) if self._open else ())

    def push(self, text: str) -> list[str]:
        """Add one frame of text; return the chunks ready to speak."""
        stripped = text.strip()
        if stripped and stripped != text:
            self._verbatim = True
        if self._verbatim:
            self._push_verbatim(text)
        elif stripped:
            words = stripped.split()
            if self._words and _CONTINUES_WORD.match(words[0]):
                self._words[-1] += words.pop(0)
                self._cut_long_last_word()
            self._add_words(words)
        ready: list[str] = []
        if not self.auto_release:
            return ready
        complete = self._complete_sentence_word_counts()
        if complete:
            ready.extend(self._pack_sentences(complete))
            self._words = self._words[sum(complete) :]
        if len(self._words) >= self.buffer_size:
            ready.extend(self._split_words(self._words))
            self._words = []
        return ready

    def flush(self) -> list[str]:
        """Release everything still buffered (end of input)."""
        if self._open:
            self._add_words([self._open])
            self._open = ""
        if not self._words:
            return []
        sentences = self._complete_sentence_word_counts()
        sentences.append(len(self._words) - sum(sentences))
        chunks = self._pack_sentences(sentences)
        self._words = []
        return chunks

    def clear(self) -> None:
        """Drop everything buffered (a barge-in)."""
        self._words = []
        self._open = ""

    # -- internals -------------------------------------------------------------------------

    def _push_verbatim(self, text: str) -> None:
        joined = self._open + text
        words = joined.split()
        self._open = words.pop() if words and not joined[-1].isspace() else ""
        self._add_words(words)
        while len(self._open) > self.max_chars:  # no prompt may exceed the chunk limit
            self._add_words([self._open[: self.max_chars]])
            self._open = self._open[self.max_chars :]

    def _add_words(self, words: Iterable[str]) -> None:
        """Append words; one longer than a chunk is cut into chunk-size pieces."""
        for word in words:
            self._words.append(word)
            self._cut_long_last_word()

    def _cut_long_last_word(self) -> None:
        word = self._words[-1]
        if len(word) > self.max_chars:
            step = self.max_chars
            self._words[-1:] = [word[i : i + step] for i in range(0, len(word), step)]

    def _complete_sentence_word_counts(self) -> list[int]:
        """Word counts of the complete sentences at the head of the buffer (the last is open)."""
        # The word being typed counts as lookahead: a new sentence has started once it exists.
        words = self._words + ([self._open] if self._open else [])
        if len(words) < 2 or not any(_SENTENCE_TERMINALS.intersection(w) for w in words[:-1]):
            return []
        try:
            segments = self._segmenter.segment(" ".join(words))
        except Exception:  # the segmenter is heuristic; never let it lose text
            logger.debug(
                "sentence segmenter failed; treating buffer as one sentence", exc_info=True
            )
            return []
        counts: list[int] = []
        position = 0
        # Map segments back onto our own words; output is always built from self._words, so a
        # segmenter that rewrites text can only cost a boundary, never a word.
        for segment in segments[:-1]:
            segment_words = segment.split()
            end = position + len(segment_words)
            if not segment_words or words[position:end] != segment_words or end >= len(words):
                break
            counts.append(len(segment_words))
            position = end
        return counts

    def _pack_sentences(self, counts: Sequence[int]) -> list[str]:
        """Greedily pack consecutive sentences into chunks of at most ``max_chars``."""
        chunks: list[str] = []
        current: list[str] = []
        position = 0
        for count in counts:
            sentence = self._words[position : position + count]
            position += count
            if _joined_len(current) + 1 + _joined_len(sentence) <= self.max_chars or not current:
                current.extend(sentence)
            else:
                chunks.extend(self._split_words(current))
                current = list(sentence)
        if current:
            chunks.extend(self._split_words(current))
        return chunks

    def _split_words(self, words: Sequence[str]) -> list[str]:
        """Cut a run of words into chunks of at most ``max_chars`` (never inside a word)."""
        chunks: list[str] = []
        start = 0
        while start < len(words):
            end = start + 1
            length = len(words[start])
            while end < len(words) and length + 1 + len(words[end]) <= self.max_chars:
                length += 1 + len(words[end])
                end += 1
            if end < len(words):
                end = _prefer_clause_break(words, start, end, self.max_chars)
            chunks.append(" ".join(words[start:end]))
            start = end
        return chunks


def _joined_len(words: Iterable[str]) -> int:
    words = list(words)
    return sum(len(w) for w in words) + max(len(words) - 1, 0)


def _prefer_clause_break(words: Sequence[str], start: int, end: int, max_chars: int) -> int:
    """Move a forced break back to just after a clause mark if one lies in the second half."""
    length = _joined_len(words[start:end])
    for cut in range(end - 1, start, -1):
        length -= len(words[cut]) + 1
        if length < max_chars // 2:
            break
        if words[cut - 1].endswith(_CLAUSE_MARKS):
            return cut
    return end
