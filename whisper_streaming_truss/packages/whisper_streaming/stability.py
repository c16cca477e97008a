"""Stable partials (sans-I/O, pure): the prefix of an utterance's partial transcript that will
not change, so a voice agent can start on it before the final.

LocalAgreement-n, as in ufal's whisper_streaming: a word is stable once the last ``agreement``
hypotheses of the utterance (its partials, each a full re-decode of the utterance so far) agree
on every word up to it, and on every word already promised, compared normalised (case and
punctuation do not count). The last ``hold_back`` words of the newest hypothesis are never
marked: the audio of a partial ends mid-speech, so its last word may be a word cut short ("fell"
of "fellow"), and partials are decoded without timestamps, so a word's count stands in for its
end time. A hypothesis whose decode was unsure (its average token log-probability under
``min_log_prob``) agrees to nothing: partials are greedy and finals a beam, and where tiny.en's
greedy decode stays wrong over several partials ("maybe consider" for the final's "may be
considered"), every two consecutive partials that agreed on it held an unsure one.

The stable prefix is a promise: it never shrinks within an utterance. Its words are spelled as
the newest hypothesis spells them (a comma may come or go); a newest hypothesis that disagrees
with a promised word, or is shorter, leaves that word as it was promised. One ``LocalAgreement``
per utterance (``SttCore`` drops it at the final).

The defaults were tuned on real speech (``scripts/bench/partials.py``, docs/benchmarks.md
"Stable partials").
"""

from __future__ import annotations

import re
from collections import deque

AGREEMENT = 2  # consecutive hypotheses that must agree on a word
HOLD_BACK_WORDS = 1  # the newest hypothesis's last words that are never marked
MIN_LOG_PROB: float | None = -0.35  # a hypothesis less sure than this agrees to nothing

_NOT_WORD = re.compile(r"[\W_]+")


def normalise(word: str) -> str:
    """A word as agreement compares it: case-folded, without punctuation ("Hello," == "hello")."""
    return _NOT_WORD.sub("", word.casefold())


def common_prefix(hypotheses: list[list[str]]) -> int:
    """How many leading words every hypothesis shares."""
    n = min(len(h) for h in hypotheses)
    for i in range(n):
        if any(h[i] != hypotheses[0][i] for h in hypotheses[1:]):
            return i
    return n


class LocalAgreement:
    """One utterance's stable prefix, fed each partial's text in order."""

    def __init__(
        self,
        agreement: int = AGREEMENT,
        hold_back: int = HOLD_BACK_WORDS,
        min_log_prob: float | None = MIN_LOG_PROB,
    ) -> None:
        if agreement < 1 or hold_back < 0:
            raise ValueError("agreement must be >= 1 and hold_back >= 0")
        self.agreement = agreement
        self.hold_back = hold_back
        self.min_log_prob = min_log_prob
        self._recent: deque[list[str]] = deque(maxlen=agreement)  # normalised hypotheses
        self._unsure: deque[bool] = deque(maxlen=agreement)  # each: under min_log_prob
        self._stable: list[str] = []  # the promised words, spelled as last seen

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self._stable)

    def update(self, text: str, log_prob: float | None = None) -> tuple[str, ...]:
        """The next hypothesis of the utterance (``log_prob``: its decode's average token
        log-probability, None if unknown); returns its stable words (never fewer than before)."""
        words = text.split()
        norm = [normalise(w) for w in words]
        self._recent.append(norm)
        unsure = self.min_log_prob is not None and log_prob is not None
        self._unsure.append(unsure and log_prob < self.min_log_prob)
        for i, word in enumerate(words[: len(self._stable)]):
            if norm[i] == normalise(self._stable[i]):
                self._stable[i] = word  # the newest spelling of a promised word
        if len(self._recent) == self.agreement and not any(self._unsure):
            # The promise joins the agreement: hypotheses that contradict a promised word (an
            # inserted "And" shifts every word after it) extend nothing until they agree again.
            promised = [normalise(w) for w in self._stable]
            agreed = common_prefix([*self._recent, promised + norm[len(promised) :]])
            agreed = min(agreed, len(words) - self.hold_back)
            if agreed > len(self._stable):
                self._stable.extend(words[len(self._stable) : agreed])
        return self.words

    def reset(self) -> None:
        """Forget everything (a new utterance)."""
        self._recent.clear()
        self._unsure.clear()
        self._stable.clear()
