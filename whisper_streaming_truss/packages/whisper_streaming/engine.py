"""Whisper inference for streaming sessions: batched partials, full-quality finals.

Runs only on the scheduler's worker thread (never on the event loop). Jobs of many sessions are
decoded in one CTranslate2 batch: partials greedy without timestamps, finals with timestamps (and
word timestamps when asked). The encoder runs on ``encoder_context_s`` of audio instead of Whisper's
fixed 30 s window when that is set (what whisper.cpp calls ``audio_ctx``): on a 2-core CPU with
tiny.en a 10 s context cut the encoder from ~300 ms to ~20 ms per utterance with the same text on
the bundled samples (measured; see docs/benchmarks.md). Production keeps the full 30 s window.
A final whose decode stops before its audio ends is decoded on from its last timestamp, as
Whisper's ``transcribe()`` would (``MAX_CONTINUATIONS``).
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from speech_common.audio import WHISPER_RATE_HZ as SAMPLE_RATE_HZ
from whisper_streaming.stability import normalise as normalise_word

MEL_FRAMES_PER_S = 100
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s

logger = logging.getLogger(__name__)

# Hallucination guards (Whisper invents "Thank you." on noise; loops on hard audio).
NO_SPEECH_DROP_PROB = 0.6  # with a low avg log-prob below: the segment is not speech
LOW_LOGPROB = -1.0
NO_SPEECH_ALWAYS_DROP_PROB = 0.9  # whatever the log-prob
MAX_COMPRESSION_RATIO = 2.4  # repeated n-grams compress too well
MAX_NEW_TOKENS = 220  # a 30 s utterance is ~100-150 text tokens (+ timestamps for finals)
CONTEXT_PAD_S = 1.0  # at least this much trailing silence in the encoder window, as in training
# Whisper's temperature fallback (its ``transcribe()`` defaults): a final whose greedy/beam decode
# compresses too well (a loop) or is improbable is decoded again by sampling at rising
# temperatures, best of BEST_OF; if every try fails, the most probable one is kept.
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
BEST_OF = 5
# Before sampling, a final decoded with a beam is decoded greedily once. Beam 5 wrote "Now...
# Now... Now... Now..." for LJ001-0010's 0.63 s "Now" where greedy wrote "Now" with a higher
# average log-prob (-0.63 against -0.65, measured); sampling gave "Now", nothing or a loop from
# one run to the next (CTranslate2's sampling cannot be seeded per call). Greedy is
# deterministic and one step cheaper than a sample of BEST_OF.
GREEDY_RETRY = True
# A decode that claims more words than its audio can hold is a loop the compression ratio
# misses when it is short: beam 5 wrote "Now... Now... Now... Now... Now..." for 0.7 s of one
# "Now" (LJ001-0010), and a fallback sample still four (5.8 words/s). It falls back like a loop.
# The fastest final on the real-speech and espeak samples is 3.7 words/s (measured, audio
# with its pads); fast conversational speech reaches ~4-5.
MAX_WORDS_PER_S = 5.0
MIN_WORDS_FOR_RATE = 4  # "no, no, no" in half a second is speech, not a loop
# Conditioning on the session's previous finals: the last tokens of their text go into the
# prompt (Whisper's ``condition_on_previous_text``). CTranslate2 batches only prompts of one
# length, so the context is cut to a bucket length: sessions' finals still share batches, and a
# job's prompt depends only on itself (batched == alone).
CONTEXT_TOKEN_BUCKETS = (0, 16, 32, 64)
MAX_PREVIOUS_TOKENS = 223  # Whisper's own bound: half the text context, less <|startofprev|>
# A decode may stop before its audio ends: Whisper closes a segment with two timestamps and then
# its end-of-text, expecting the next 30 s window to go on from there (transcribe() seeks to that
# timestamp and decodes again). tiny.en with the full window stopped at 7.0 s of LJ001-0007's
# 8.4 s ("... of about", without "1455"). The rest of a final's audio is decoded again from the
# last timestamp, conditioned on the text so far, at most MAX_CONTINUATIONS times.
# Shorter leftovers hold no word (10 s window: 30-40 ms left, measured). Twice the default
# post-roll (150 ms of audio after the last speech window), so a leftover this long holds speech
# the VAD heard, not only a final's trailing audio, where Whisper could invent a "Thank you.".
MIN_CONTINUATION_S = 0.3
MAX_CONTINUATIONS = 3
# A shortened encoder window (encoder_context_s < 30) is out of Whisper's training: a short
# final is then a second of speech in a window of padding, and tiny.en with the 10 s window
# said "However, however," for fleurs-en-000's 1 s opening word and "Now... Now..." for
# LJ001-0010's "Now", where Whisper's own 30 s window said "However," and "Now"
# (docs/benchmarks.md, "What the gap is made of"). A final of at most SHORT_FINAL_S whose
# text says a word or phrase twice back to back is decoded again, alone, with the full window,
# and the retry is kept when it does not. A genuine "no, no" stays (the retry says it too); the cost is one 30 s encode
# for such a final only.
SHORT_FINAL_S = 2.0
SAMPLES_PER_MEL_FRAME = SAMPLE_RATE_HZ // MEL_FRAMES_PER_S


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
    context: str = ""  # the session's previous finals (finals only; see CONTEXT_TOKEN_BUCKETS)
    # A final's first decode samples at this temperature when > 0 (best of BEST_OF), and falls
    # back only to the hotter FALLBACK_TEMPERATURES (OpenAI's transcription ``temperature``);
    # 0: beam search, then the whole fallback.
    temperature: float = 0.0
    # Finals only: words the final must begin with (the utterance's stable partial words, so
    # the final never takes a promised word back): a free decode that does not is decoded
    # again with them forced, as Whisper's ``prefix`` (WhisperEngine._keep_promise).
    prefix: str = ""


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
    tokens: list[int] = field(default_factory=list)  # its decode's tokens, timestamps included
    seek: int = 0  # mel frames from the job's start to the window this segment was decoded in


@dataclass
class Transcript:
    segments: list[Segment]
    language: str
    language_prob: float | None
    temperature: float = 0.0  # > 0: a fallback decode by sampling

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1)


MIN_REPEAT_WORDS = 3  # a repeated phrase this long is a decoding loop, not speech
_WORD = re.compile(r"[\w']+")


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


# A phrase of MIN_REPEAT_WORDS words said more than this often in one final is a loop: beam 5
# ended a final cut inside "produced the block books" with that phrase four times (12 words in
# 0.8 s of one segment; the compression ratio of the whole 19 s final stayed under 2.4).
# Speakers repeat a phrase twice ("let me see, let me see"); the bar is no phrase twice
# unless the audio holds it twice.
MAX_PHRASE_REPEATS = 2


def repeats_a_phrase(text: str) -> bool:
    """A phrase of MIN_REPEAT_WORDS words, not all one word ("no, no, no, no" is speech; a
    one-word loop is too_many_words'), occurs more than MAX_PHRASE_REPEATS times."""
    words = _words(text)
    n = MIN_REPEAT_WORDS
    grams = Counter(words[i : i + n] for i in range(len(words) - n + 1))
    return any(count > MAX_PHRASE_REPEATS and len(set(g)) > 1 for g, count in grams.items())


def says_twice_in_a_row(text: str) -> bool:
    """A word or phrase followed at once by itself ("However, however,", "Now... Now...")."""
    words = _words(text)
    return any(
        words[i : i + n] == words[i + n : i + 2 * n]
        for n in range(1, len(words) // 2 + 1)
        for i in range(len(words) - 2 * n + 1)
    )


def too_many_words(text: str, duration_s: float) -> bool:
    """More words than ``duration_s`` of audio can hold: a decoding loop."""
    words = len(_words(text))
    return words >= MIN_WORDS_FOR_RATE and words > MAX_WORDS_PER_S * max(duration_s, 1e-3)


def is_hallucination(seg: Segment) -> bool:
    """Segments Whisper produced from non-speech, or looping on itself."""
    if seg.no_speech_prob > NO_SPEECH_ALWAYS_DROP_PROB:
        return True
    if seg.no_speech_prob > NO_SPEECH_DROP_PROB and (seg.avg_logprob or 0.0) < LOW_LOGPROB:
        return True
    return len(seg.text) > 20 and compression_ratio(seg.text) > MAX_COMPRESSION_RATIO


def drop_repeats(segments: list[Segment], before: Sequence[Segment] = ()) -> list[Segment]:
    """Remove what Whisper adds when it loops at the end of a window: segments of zero length
    (start == end: no audio under them) and segments that repeat an earlier segment of the same
    transcript word for word (3 words or more). A genuine repetition inside one segment
    ("no, no, no") or a short one stays."""
    kept: list[Segment] = []
    seen: set[tuple[str, ...]] = {_words(seg.text) for seg in before}  # kept already
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
        self._previous_tokens = lru_cache(maxsize=1024)(self._compute_previous_tokens)

    def _text_tokens(self, text: str) -> list[int]:
        text = text.strip()  # text tokens are the same whatever the language
        return (
            self.model.hf_tokenizer.encode(" " + text, add_special_tokens=False).ids if text else []
        )

    def _compute_previous_tokens(self, prompt: str, context: str) -> tuple[int, ...]:
        tokens = self._text_tokens(context)
        keep = max(b for b in CONTEXT_TOKEN_BUCKETS if b <= len(tokens))
        tokens = self._text_tokens(prompt) + (tokens[len(tokens) - keep :] if keep else [])
        return tuple(tokens[-MAX_PREVIOUS_TOKENS:])

    @property
    def supported_languages(self) -> list[str]:
        return list(self.model.supported_languages)

    def batch_key(self, job: TranscribeJob) -> tuple:
        """Jobs that can share one generate() call and get what they would get alone.

        CTranslate2 needs <|startoftranscript|> at one position in every prompt of a batch, so
        the prompt's length in tokens is part of the key (the language token is one token, but
        None means detection), and a batch's decoding settings and alignment tokenizer are its
        first job's, so those are too. A batch is encoded at one width, so the width the job
        gets alone is too: with a shortened window (the CPU stand-in's 10 s) a job longer than
        it widens the encoder input, and a short final batched with one was decoded otherwise
        than alone (a reviewer's finding); with Whisper's 30 s window every job's is 30 s.
        """
        o = job.options
        width = self._width(_frames(job), self.min_context_frames)
        if o.language_detection_only:
            return ("detect", width)  # encode + detect, no decoding: any jobs share a batch
        prompt = (len(self.previous_tokens(o, job.kind)), o.language)
        if job.kind is JobKind.PARTIAL:
            return (job.kind, width, *prompt)
        return (
            job.kind,
            width,
            *prompt,
            o.beam_size,
            o.length_penalty,
            o.repetition_penalty,
            o.no_repeat_ngram_size,
            o.word_timestamps,
            o.temperature,
        )

    def run(self, jobs: list[TranscribeJob]) -> list[Transcript]:
        """Scheduler entry point: one batch of jobs sharing a ``batch_key``."""
        out = self._run(jobs, self.min_context_frames)
        if jobs[0].kind is JobKind.FINAL and self.min_context_frames < FULL_WINDOW_FRAMES:
            for i, job in enumerate(jobs):
                if self._short_repeat(job, out[i]):  # see SHORT_FINAL_S
                    (retry,) = self._run([job], FULL_WINDOW_FRAMES)
                    if not says_twice_in_a_row(retry.text):
                        out[i] = retry
        return out

    @staticmethod
    def _short_repeat(job: TranscribeJob, transcript: Transcript) -> bool:
        short = len(job.audio) <= SHORT_FINAL_S * SAMPLE_RATE_HZ
        return (
            short
            and not job.options.language_detection_only
            and says_twice_in_a_row(transcript.text)
        )

    def _run(self, jobs: list[TranscribeJob], context_frames: int) -> list[Transcript]:
        features, frames = self._features(jobs, context_frames)
        encoded = self.model.encode(features)
        languages = self._languages(jobs, encoded)
        if jobs[0].options.language_detection_only:  # its own job: no decoding
            return [Transcript([], lang, prob) for lang, prob in languages]
        return self._generate(jobs, languages, features, encoded, frames, context_frames)

    def previous_tokens(self, options: DecodeOptions, kind: JobKind) -> tuple[int, ...]:
        """The tokens after <|startofprev|>: the session's prompt, then (finals only) the last
        tokens of its previous finals, cut to a bucket length."""
        context = options.context if kind is JobKind.FINAL else ""
        return self._previous_tokens(options.prompt, context)

    # -- steps ---------------------------------------------------------------------------------
    def _features(
        self, jobs: list[TranscribeJob], context_frames: int
    ) -> tuple[np.ndarray, list[int]]:
        mels = [self.model.feature_extractor(job.audio) for job in jobs]
        frames = [_frames(job) for job in jobs]
        width = self._width(max(frames), context_frames)
        return np.stack([pad_or_trim(m, width) for m in mels]).astype(np.float32), frames

    @staticmethod
    def _width(frames: int, context_frames: int) -> int:
        """The encoder's input width (mel frames) for audio of ``frames``: the window, or the
        audio and CONTEXT_PAD_S when that is longer, at most Whisper's 30 s."""
        needed = frames + int(CONTEXT_PAD_S * MEL_FRAMES_PER_S)
        width = min(max(context_frames, needed), FULL_WINDOW_FRAMES)
        return width + width % 2  # the encoder's conv stride is 2

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

    def _generate(
        self, jobs, languages, features, encoded, frames, context_frames: int
    ) -> list[Transcript]:
        final = jobs[0].kind is JobKind.FINAL
        prompts = [
            self.model.get_prompt(
                self._tokenizer(lang),
                list(self.previous_tokens(job.options, job.kind)),
                without_timestamps=not final,
            )
            for job, (lang, _) in zip(jobs, languages, strict=True)
        ]
        tok0 = self._tokenizer(languages[0][0])
        opts = jobs[0].options
        first_temperature = opts.temperature if final else 0.0
        results = self._decode(encoded, prompts, opts, final, tok0, temperature=first_temperature)
        temperatures = [first_temperature] * len(jobs)
        if final:
            durations = [len(job.audio) / SAMPLE_RATE_HZ for job in jobs]
            results, temperatures = self._fallback(
                features, prompts, opts, tok0, results, durations
            )
        forced_until: list[int | None] = [None] * len(jobs)  # see _keep_promise
        if final:
            for i, job in enumerate(jobs):
                if job.options.prefix:
                    tok = self._tokenizer(languages[i][0])
                    kept = self._keep_promise(job, tok, features[i : i + 1], results[i], frames[i])
                    if kept is not None:
                        results[i], temperatures[i], forced_until[i] = kept
        parsed, seeks = [], []
        for i, (job, (lang, _), res, n_frames) in enumerate(
            zip(jobs, languages, results, frames, strict=True)
        ):
            duration = len(job.audio) / SAMPLE_RATE_HZ
            if final:
                subsegments, seek = self._split(self._tokenizer(lang), res, 0, n_frames, duration)
                if forced_until[i] is not None and subsegments:
                    seek = _seek_after_forced_prefix(subsegments, seek, forced_until[i])
            else:
                subsegments = [dict(seek=0, start=0.0, end=duration, tokens=res.sequences_ids[0])]
                seek = n_frames
            parsed.append(subsegments)
            seeks.append(seek)
        if final and any(j.options.word_timestamps for j in jobs) and all(parsed):
            if len({lang for lang, _ in languages}) > 1:
                # Detected languages differ: one alignment tokenizer would be wrong for some.
                # The worker then runs each job alone (rare: auto language + word timestamps).
                raise MixedLanguageBatch(sorted({lang for lang, _ in languages}))
            # One alignment pass for the whole batch.
            self.model.add_word_timestamps(
                parsed, tok0, encoded, frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
            )
            seeks = [
                _seek_after_words(subs, seek, n)
                for subs, seek, n in zip(parsed, seeks, frames, strict=True)
            ]
        out = []
        for i, (job, (lang, prob)) in enumerate(zip(jobs, languages, strict=True)):
            tok = self._tokenizer(lang)
            passes = [(parsed[i], results[i], temperatures[i])]
            if final:
                passes += self._continue(job, tok, parsed[i], seeks[i], frames[i], context_frames)
            segments = [
                seg
                for subsegments, res, _ in passes
                for seg in self._segments(job, tok, subsegments, res, opts.length_penalty)
            ]
            # The segments that hold a final's promised words stay whatever the guards say: the
            # partials heard them twice, surely, and a final never takes one back ("I don't
            # know. I don't know." promised twice, then a repeat the loop guard would drop).
            kept = _promised_segments(segments, job.options.prefix) if final else 0
            rest = [seg for seg in segments[kept:] if not is_hallucination(seg)]
            if final:  # partials carry no timestamps: nothing to tell a loop by
                rest = drop_repeats(rest, before=segments[:kept])
            segments = segments[:kept] + rest
            out.append(Transcript(segments, lang, prob, max(t for _, _, t in passes)))
        return out

    def _keep_promise(self, job: TranscribeJob, tok, features, free, n_frames: int):
        """A final whose free decode does not begin with its promised words (``prefix``) is
        decoded again, alone, beginning with them (forced), with the same fallback. Returns
        (result, temperature, where the free decode's last segment ended in mel frames), or
        None when the free decode keeps the promise (the usual case: no extra decode)."""
        promised = [normalise_word(w) for w in job.options.prefix.split()]
        heard = [normalise_word(w) for w in self._text(free, tok).split()]
        if heard[: len(promised)] == promised:
            return None
        duration = len(job.audio) / SAMPLE_RATE_HZ
        free_subsegments, _ = self._split(tok, free, 0, n_frames, duration)
        free_end = round(free_subsegments[-1]["end"] * MEL_FRAMES_PER_S) if free_subsegments else 0
        previous = list(self.previous_tokens(job.options, job.kind))
        prompt = self.model.get_prompt(tok, previous, prefix=job.options.prefix)
        forced = len(prompt) - len(self.model.get_prompt(tok, previous))
        opts = job.options
        encoded = self.model.encode(features)
        first = self._decode(encoded, [prompt], opts, True, tok, opts.temperature, forced=forced)
        [res], [temperature] = self._fallback(
            features, [prompt], opts, tok, first, [duration], forced
        )
        return res, temperature, free_end

    def _split(self, tok, res, seek: int, n_frames: int, duration_s: float):
        """A final's tokens as timed segments (times from the job's start) and where the decode
        stopped (mel frames from the job's start; ``seek + n_frames`` when it covered all)."""
        subsegments, next_seek, _ = self.model._split_segments_by_timestamps(  # noqa: SLF001
            tokenizer=tok,
            tokens=res.sequences_ids[0],
            time_offset=seek / MEL_FRAMES_PER_S,
            segment_size=n_frames,
            segment_duration=duration_s,
            seek=seek,
        )
        return subsegments, next_seek

    def _continue(
        self, job: TranscribeJob, tok, subsegments, seek: int, n_frames: int, context_frames: int
    ):
        """Decode what a final's decode left over (see MIN_CONTINUATION_S), alone: the prompt
        holds the text so far (the segments kept, as transcribe(): not an unfinished one), so it
        batches with nothing, and a batched final still equals the same final alone. Returns
        the extra passes (subsegments, result, temperature)."""

        def text_tokens(subsegments) -> list[int]:
            return [t for sub in subsegments for t in sub["tokens"] if t < tok.eot]

        passes = []
        previous = list(self.previous_tokens(job.options, job.kind)) + text_tokens(subsegments)
        min_frames = int(MIN_CONTINUATION_S * MEL_FRAMES_PER_S)
        opts = job.options
        while seek + min_frames <= n_frames and len(passes) < MAX_CONTINUATIONS:
            tail = job.audio[seek * SAMPLES_PER_MEL_FRAME :]
            features, [tail_frames] = self._features(
                [TranscribeJob(job.kind, tail, opts)], context_frames
            )
            encoded = self.model.encode(features)
            tail_prompt = self.model.get_prompt(tok, previous[-MAX_PREVIOUS_TOKENS:])
            tail_s = len(tail) / SAMPLE_RATE_HZ
            first = self._decode(
                encoded, [tail_prompt], opts, True, tok, temperature=opts.temperature
            )
            [res], [temperature] = self._fallback(
                features, [tail_prompt], opts, tok, first, [tail_s]
            )
            subsegments, next_seek = self._split(tok, res, seek, tail_frames, tail_s)
            if opts.word_timestamps and subsegments:
                self.model.add_word_timestamps(
                    [subsegments],
                    tok,
                    encoded,
                    [tail_frames],
                    PREPEND_PUNCTUATIONS,
                    APPEND_PUNCTUATIONS,
                    0.0,
                )
                next_seek = _seek_after_words(subsegments, next_seek, n_frames)
            passes.append((subsegments, res, temperature))
            if next_seek <= seek:
                break
            previous += text_tokens(subsegments)
            seek = next_seek
        return passes

    @staticmethod
    def _segments(job: TranscribeJob, tok, subsegments, res, length_penalty) -> list[Segment]:
        """One decode's segments with text: absolute times, words when asked."""
        avg_logprob = _avg_logprob(res, length_penalty)
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
                tokens=list(sub["tokens"]),
                seek=int(sub["seek"]),
            )
            if seg.text:
                segments.append(seg)
        return segments

    def _decode(
        self,
        encoded,
        prompts,
        opts: DecodeOptions,
        final: bool,
        tok0,
        temperature,
        greedy=False,
        forced: int = 0,
    ):
        """generate() for a batch; ``forced``: the prompts end with that many forced tokens
        (a prefix), which the results hold but the model did not choose (``_Forced``)."""
        sampling = {}
        if temperature > 0:  # as Whisper: sample, best of BEST_OF
            sampling = dict(
                sampling_topk=0, sampling_temperature=temperature, num_hypotheses=BEST_OF
            )
        results = self.model.model.generate(
            encoded,
            prompts,
            beam_size=opts.beam_size if final and temperature == 0 and not greedy else 1,
            length_penalty=opts.length_penalty,
            repetition_penalty=opts.repetition_penalty,
            no_repeat_ngram_size=opts.no_repeat_ngram_size,
            max_length=min(max(len(p) for p in prompts) + MAX_NEW_TOKENS, self.model.max_length),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok0, [-1])),
            **sampling,
        )
        return [_Forced(r, forced) for r in results] if forced else results

    def _fallback(
        self, features, prompts, opts: DecodeOptions, tok0, results, durations, forced: int = 0
    ):
        """Whisper's temperature fallback for the finals of a batch that look like a loop or are
        improbable (and are not silence): decoded again, together, greedily if the first decode
        was a beam search (GREEDY_RETRY), then at rising temperatures."""
        tries = [[(res, opts.temperature)] for res in results]
        sampled = opts.temperature > 0  # the first decode sampled: no beam to retry greedily
        greedy = [(0.0, True)] if GREEDY_RETRY and opts.beam_size > 1 and not sampled else []
        hotter = [t for t in FALLBACK_TEMPERATURES if t > opts.temperature]
        pending = [
            i
            for i, res in enumerate(results)
            if self._needs_fallback(res, opts, tok0, durations[i])
        ]
        for temperature, is_greedy in greedy + [(t, False) for t in hotter]:
            if not pending:
                break
            encoded = self.model.encode(features[pending])  # a subset: encode it again (rare)
            retry = self._decode(
                encoded,
                [prompts[i] for i in pending],
                opts,
                True,
                tok0,
                temperature,
                is_greedy,
                forced,
            )
            for i, res in zip(pending, retry, strict=True):
                tries[i].append((res, temperature))
            pending = [
                i
                for i, res in zip(pending, retry, strict=True)
                if self._needs_fallback(res, opts, tok0, durations[i])
            ]
        chosen = [t[-1] for t in tries]
        for i in pending:  # every try failed: keep the most probable, loops last (as Whisper)
            chosen[i] = max(
                tries[i],
                key=lambda t, i=i: (
                    not self._loops(t[0], tok0, durations[i]),
                    _avg_logprob(t[0], opts.length_penalty) or 0.0,
                ),
            )
        return [c[0] for c in chosen], [c[1] for c in chosen]

    @staticmethod
    def _text(res, tok) -> str:
        return tok.decode([t for t in res.sequences_ids[0] if t < tok.eot])

    def _loops(self, res, tok, duration_s: float) -> bool:
        text = self._text(res, tok)
        return (
            compression_ratio(text) > MAX_COMPRESSION_RATIO
            or too_many_words(text, duration_s)
            or repeats_a_phrase(text)
        )

    def _needs_fallback(self, res, opts: DecodeOptions, tok, duration_s: float) -> bool:
        avg = _avg_logprob(res, opts.length_penalty)
        improbable = avg is not None and avg < LOW_LOGPROB
        if improbable and res.no_speech_prob > NO_SPEECH_DROP_PROB:
            return False  # silence: dropped later, not decoded again
        return improbable or self._loops(res, tok, duration_s)

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


def _promised_segments(segments: list[Segment], promised: str) -> int:
    """How many leading segments hold the ``promised`` words (0 if none were promised)."""
    left = len(promised.split())
    count = 0
    while left > 0 and count < len(segments):
        left -= len(segments[count].text.split())
        count += 1
    return count


def _seek_after_forced_prefix(subsegments: list[dict], seek: int, free_end: int) -> int:
    """Where a final decoded from a forced prefix goes on. Whisper often closes the window right
    after a long forced prefix ("... printing beautiful" <|7.58|>, end of text, with "letters"
    still in the audio: tiny.en on LJ001-0012), a single timestamp that ``transcribe()`` reads
    as "nothing more in this window". When the free decode of the same audio heard speech past
    that point (its last segment ends MIN_CONTINUATION_S or more later), the decode goes on
    from the forced decode's last segment; otherwise the rest is the utterance's trailing
    audio, where a continuation could only invent words ("It's good.", measured)."""
    forced_end = round(subsegments[-1]["end"] * MEL_FRAMES_PER_S)
    if free_end - forced_end < MIN_CONTINUATION_S * MEL_FRAMES_PER_S:
        return seek
    return min(seek, forced_end)


def _frames(job: TranscribeJob) -> int:
    """A job's audio in mel frames (at most Whisper's 30 s)."""
    return min(int(len(job.audio) * MEL_FRAMES_PER_S / SAMPLE_RATE_HZ), FULL_WINDOW_FRAMES)


def _seek_after_words(subsegments: list[dict], seek: int, n_frames: int) -> int:
    """Where a decode that stopped early goes on when its words are aligned: after its last
    word (as transcribe() does), so the next segment does not overlap it."""
    ends = [w["end"] for sub in subsegments for w in sub.get("words", [])]
    if seek >= n_frames or not ends:
        return seek
    return max(seek, round(ends[-1] * MEL_FRAMES_PER_S))


def _avg_logprob(res, length_penalty: float) -> float | None:
    """faster-whisper's average log-probability of a generate() result's best sequence: of
    the tokens the model chose (a forced prefix's are in the sequence and in the length
    CTranslate2 divides the score by, but carry no log-probability)."""
    if not res.scores:
        return None
    n = max(len(res.sequences_ids[0]), 1)
    chosen = n - getattr(res, "forced", 0)
    return res.scores[0] * (n**length_penalty) / (chosen + 1)


@dataclass(frozen=True)
class _Forced:
    """A generate() result whose first ``forced`` tokens are its prompt's forced prefix."""

    result: Any
    forced: int

    @property
    def sequences_ids(self):
        return self.result.sequences_ids

    @property
    def scores(self):
        return self.result.scores

    @property
    def no_speech_prob(self):
        return self.result.no_speech_prob


PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
