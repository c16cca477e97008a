"""Whisper inference for streaming sessions: batched partials, full-quality finals.

Runs only on the scheduler's worker thread (never on the event loop). Jobs of many sessions are
decoded in one CTranslate2 batch: partials greedy without timestamps, finals with timestamps (and
word timestamps when asked). The encoder runs on ``encoder_context_s`` of audio instead of Whisper's
fixed 30 s window when that is set (what whisper.cpp calls ``audio_ctx``): on a 2-core CPU with
tiny.en a 10 s context cut the encoder from ~300 ms to ~20 ms per utterance with the same text on
the bundled samples (measured; see README). Production keeps the full 30 s window.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

MEL_FRAMES_PER_S = 100
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
# Hallucination guards (Whisper invents "Thank you." on noise; loops on hard audio).
NO_SPEECH_DROP_PROB = 0.6  # with a low avg log-prob below: the segment is not speech
LOW_LOGPROB = -1.0
NO_SPEECH_ALWAYS_DROP_PROB = 0.9  # whatever the log-prob
MAX_COMPRESSION_RATIO = 2.4  # repeated n-grams compress too well
MAX_NEW_TOKENS = 220  # a 30 s utterance is ~100-150 text tokens (+ timestamps for finals)
CONTEXT_PAD_S = 1.0  # at least this much trailing silence in the encoder window, as in training


class MixedLanguageBatch(ValueError):
    """Word alignment of one batch needs one language."""


class JobKind(IntEnum):
    """Also the scheduler priority: finals run before partials."""

    FINAL = 0
    PARTIAL = 1


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None  # None = detect
    prompt: str = ""
    word_timestamps: bool = False
    beam_size: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    language_options: tuple[str, ...] = ()
    language_detection_only: bool = False


@dataclass
class TranscribeJob:
    kind: JobKind
    audio: np.ndarray  # float32 mono 16 kHz, at most 30 s
    options: DecodeOptions
    offset_s: float = 0.0  # where the audio starts in the session (times in results are absolute)


@dataclass
class Word:
    word: str
    start: float
    end: float
    prob: float


@dataclass
class Segment:
    text: str
    start: float
    end: float
    avg_logprob: float | None
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass
class Transcript:
    segments: list[Segment]
    language: str
    language_prob: float | None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1)


def is_hallucination(seg: Segment) -> bool:
    """Segments Whisper produced from non-speech, or looping on itself."""
    if seg.no_speech_prob > NO_SPEECH_ALWAYS_DROP_PROB:
        return True
    if seg.no_speech_prob > NO_SPEECH_DROP_PROB and (seg.avg_logprob or 0.0) < LOW_LOGPROB:
        return True
    return len(seg.text) > 20 and compression_ratio(seg.text) > MAX_COMPRESSION_RATIO


MIN_REPEAT_WORDS = 3  # a repeated phrase this long is a decoding loop, not speech
_WORD = re.compile(r"[\w']+")


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def drop_repeats(segments: list[Segment]) -> list[Segment]:
    """Remove what Whisper adds when it loops at the end of a window: segments of zero length
    (start == end: no audio under them) and segments that repeat an earlier segment of the same
    transcript word for word (3 words or more). A genuine repetition inside one segment
    ("no, no, no") or a short one stays."""
    kept: list[Segment] = []
    seen: set[tuple[str, ...]] = set()
    for seg in segments:
        words = _words(seg.text)
        if seg.end <= seg.start:
            continue
        if len(words) >= MIN_REPEAT_WORDS and words in seen:
            continue
        seen.add(words)
        kept.append(seg)
    return kept


class WhisperEngine:
    """One WhisperModel for the process; ``run`` is the scheduler's batch function."""

    def __init__(self, model: WhisperModel, encoder_context_s: float = 30.0) -> None:
        self.model = model
        self.multilingual = model.model.is_multilingual
        self.min_context_frames = int(min(encoder_context_s, 30.0) * MEL_FRAMES_PER_S)
        self._tokenizers: dict[str, Tokenizer] = {}

    @property
    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

    @staticmethod
    def batch_key(job: TranscribeJob) -> tuple:
        """Jobs that can share one generate() call and get what they would get alone.

        CTranslate2 needs <|startoftranscript|> at one position in every prompt of a batch, so
        the prompt (its text and language fix its length) is part of the key, and a batch's
        decoding settings and alignment tokenizer are its first job's, so those are too.
        """
        o = job.options
        if o.language_detection_only:
            return ("detect",)  # encode + detect, no decoding: any jobs share a batch
        prompt = (o.prompt, o.language)
        if job.kind is JobKind.PARTIAL:
            return (job.kind, *prompt)
        return (
            job.kind,
            *prompt,
            o.beam_size,
            o.length_penalty,
            o.repetition_penalty,
            o.no_repeat_ngram_size,
            o.word_timestamps,
        )

    def run(self, jobs: list[TranscribeJob]) -> list[Transcript]:
        """Scheduler entry point: one batch of jobs sharing a ``batch_key``."""
        features, frames = self._features(jobs)
        encoded = self.model.encode(features)
        languages = self._languages(jobs, encoded)
        if jobs[0].options.language_detection_only:  # its own job: no decoding
            return [Transcript([], lang, prob) for lang, prob in languages]
        return self._generate(jobs, languages, encoded, frames, jobs[0].kind is JobKind.FINAL)

    # -- steps ---------------------------------------------------------------------------------
    def _features(self, jobs: list[TranscribeJob]) -> tuple[np.ndarray, list[int]]:
        mels = [self.model.feature_extractor(job.audio) for job in jobs]
        frames = [
            min(int(len(job.audio) * MEL_FRAMES_PER_S / SAMPLE_RATE_HZ), FULL_WINDOW_FRAMES)
            for job in jobs
        ]
        needed = max(frames) + int(CONTEXT_PAD_S * MEL_FRAMES_PER_S)
        width = min(max(self.min_context_frames, needed), FULL_WINDOW_FRAMES)
        width += width % 2  # the encoder's conv stride is 2
        return np.stack([pad_or_trim(m, width) for m in mels]).astype(np.float32), frames

    def _languages(self, jobs: list[TranscribeJob], encoded) -> list[tuple[str, float | None]]:
        """Each job's language: its session's, or detected from its own audio (for
        ``audio_language: auto`` and for detection-only jobs, whatever the session's language).
        Detection reads each item of the batch on its own: the answer does not depend on the
        batch. An English-only model detects nothing: "en", probability unknown (None)."""
        if not self.multilingual:
            return [("en", None)] * len(jobs)
        needs = [j.options.language is None or j.options.language_detection_only for j in jobs]
        detected = self.model.model.detect_language(encoded) if any(needs) else None
        out = []
        for i, job in enumerate(jobs):
            if not needs[i]:
                out.append((job.options.language, None))
            else:
                probs = [(tok[2:-2], p) for tok, p in detected[i]]
                out.append(self._pick_language(probs, job.options))
        return out

    def _generate(self, jobs, languages, encoded, frames, final: bool) -> list[Transcript]:
        prompts = []
        for job, (lang, _) in zip(jobs, languages, strict=True):
            tok = self._tokenizer(lang)
            previous = tok.encode(" " + job.options.prompt.strip()) if job.options.prompt else []
            prompts.append(self.model.get_prompt(tok, previous, without_timestamps=not final))
        tok0 = self._tokenizer(languages[0][0])
        opts = jobs[0].options
        results = self.model.model.generate(
            encoded,
            prompts,
            beam_size=opts.beam_size if final else 1,
            length_penalty=opts.length_penalty,
            repetition_penalty=opts.repetition_penalty,
            no_repeat_ngram_size=opts.no_repeat_ngram_size,
            max_length=min(max(len(p) for p in prompts) + MAX_NEW_TOKENS, self.model.max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok0, [-1])),
        )
        parsed = []
        for job, (lang, _), res, n_frames in zip(jobs, languages, results, frames, strict=True):
            tok = self._tokenizer(lang)
            duration = len(job.audio) / SAMPLE_RATE_HZ
            if final:
                subsegments, _, _ = self.model._split_segments_by_timestamps(  # noqa: SLF001
                    tokenizer=tok,
                    tokens=res.sequences_ids[0],
                    time_offset=0.0,
                    segment_size=n_frames,
                    segment_duration=duration,
                    seek=0,
                )
            else:
                subsegments = [dict(seek=0, start=0.0, end=duration, tokens=res.sequences_ids[0])]
            parsed.append(subsegments)
        if final and any(j.options.word_timestamps for j in jobs) and all(parsed):
            if len({lang for lang, _ in languages}) > 1:
                # Detected languages differ: one alignment tokenizer would be wrong for some.
                # The worker then runs each job alone (rare: auto language + word timestamps).
                raise MixedLanguageBatch(sorted({lang for lang, _ in languages}))
            # One alignment pass for the whole batch.
            self.model.add_word_timestamps(
                parsed, tok0, encoded, frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
            )
        out = []
        for job, (lang, prob), res, subsegments in zip(
            jobs, languages, results, parsed, strict=True
        ):
            n = max(len(res.sequences_ids[0]), 1)
            avg_logprob = res.scores[0] * (n**opts.length_penalty) / (n + 1) if res.scores else None
            tok = self._tokenizer(lang)
            duration = len(job.audio) / SAMPLE_RATE_HZ
            segments = []
            for sub in subsegments:
                words = sub.get("words", []) if job.options.word_timestamps else []
                seg = Segment(
                    text=tok.decode([t for t in sub["tokens"] if t < tok.eot]).strip(),
                    start=job.offset_s + min(sub["start"], duration),
                    end=job.offset_s + min(sub["end"], duration),
                    avg_logprob=avg_logprob,
                    no_speech_prob=res.no_speech_prob,
                    words=[
                        Word(
                            w["word"].strip(),
                            job.offset_s + w["start"],
                            job.offset_s + w["end"],
                            w["probability"],
                        )
                        for w in words
                    ],
                )
                if seg.text and not is_hallucination(seg):
                    segments.append(seg)
            if final:  # partials carry no timestamps: nothing to tell a loop by
                segments = drop_repeats(segments)
            out.append(Transcript(segments=segments, language=lang, language_prob=prob))
        return out

    # -- helpers -------------------------------------------------------------------------------
    def _tokenizer(self, language: str) -> Tokenizer:
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self.model.hf_tokenizer,
                self.multilingual,
                task="transcribe",
                language=language if self.multilingual else None,
            )
        return self._tokenizers[language]

    @staticmethod
    def _pick_language(probs: list[tuple[str, float]], options: DecodeOptions) -> tuple[str, float]:
        allowed = set(options.language_options)
        for lang, prob in probs:
            if not allowed or lang in allowed:
                return lang, prob
        return probs[0]


PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
