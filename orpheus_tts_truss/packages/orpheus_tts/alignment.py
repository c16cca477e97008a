"""Word timestamps for generated speech: forced alignment of the known text against its audio.

Two steps, both cheap on a CPU:

1. Whisper's cross-attention alignment (CTranslate2 ``align``: dynamic time warping over the
   alignment heads, what faster-whisper uses for its word timestamps), with the *known* text
   as the decoder's tokens: nothing is transcribed. Its boundaries are coarse (a median error of
   about 90 ms on espeak-ng words with known boundaries: ``scripts/bench/alignment.py``), late
   or early by about the same amount for every word of an utterance.
2. Refinement on the audio itself: a word boundary lies where the signal is quiet. The quiet
   runs (10 ms frames more than ``QUIET_BELOW_PEAK_DB`` under the loudest frame) are matched to
   the Whisper boundaries in order by dynamic programming (each run takes at most one
   boundary, a boundary may take none); a matched boundary moves into its run (the word before
   ends where the run starts, the next begins where it ends). Unmatched boundaries (words run
   together) keep Whisper's estimate. The first word starts at the first loud frame, the last
   ends at the last one.

Measured on this CPU (tests/test_orpheus_alignment.py): see docs/tts.md's table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from orpheus_tts.tokens import SAMPLE_RATE_HZ as MODEL_RATE_HZ  # Orpheus/SNAC output
from speech_common.audio import WHISPER_RATE_HZ as SAMPLE_RATE_HZ

FRAME_S = 0.01  # energy frames for the refinement
QUIET_BELOW_PEAK_DB = 35.0
MIN_QUIET_S = 0.02  # shorter dips inside a word are not pauses
# A Whisper boundary may move this far onto a quiet run (its bias was ~0.1-0.15 s).
MAX_MOVE_S = 0.3
UNMATCHED_COST_S = 0.2  # a boundary left alone costs as much as a move of this size
ENCODER_CONTEXT_S = 10.0  # as the CPU STT default: 10 s encodes ~15x faster than 30 s
_TAG = re.compile(r"<[a-z_]+>")  # Orpheus's emotive tags are not words


@dataclass(frozen=True)
class WordTime:
    word: str
    start_s: float
    end_s: float


class WordAligner:
    """Aligns known text to 16 kHz audio with a faster-whisper ``WhisperModel``."""

    def __init__(
        self, model: Any, encoder_context_s: float = ENCODER_CONTEXT_S, refine: bool = True
    ) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self.model = model
        self.refine = refine  # False: Whisper's boundaries as they are (for comparison)
        multilingual = model.model.is_multilingual
        self.tokenizer = Tokenizer(
            model.hf_tokenizer, multilingual, task="transcribe",
            language="en" if multilingual else None,
        )  # fmt: skip
        self.min_frames = int(encoder_context_s * 100)

    def align(self, audio: np.ndarray, text: str) -> list[WordTime]:
        """Each whitespace-separated word of ``text`` (tags dropped) with its start and end in
        seconds from the start of ``audio`` (float32 mono 16 kHz, at most 30 s)."""
        words = _TAG.sub(" ", text).split()
        if not words or len(audio) == 0:
            return []
        estimates = self._whisper(audio, " ".join(words))
        if not self.refine:
            return [
                WordTime(w, round(a, 3), round(b, 3))
                for w, (a, b) in zip(words, estimates, strict=True)
            ]
        return refine(audio, words, estimates)

    def _whisper(self, audio: np.ndarray, text: str) -> list[tuple[float, float]]:
        from faster_whisper.audio import pad_or_trim

        features = self.model.feature_extractor(audio)
        frames = min(features.shape[-1], 3000)
        width = min(max(self.min_frames, frames + 100), 3000)
        width += width % 2
        encoded = self.model.encode(pad_or_trim(features, width)[None].astype(np.float32))
        tokens = self.tokenizer.encode(" " + text)
        pieces = self.model.find_alignment(self.tokenizer, [tokens], encoded, frames)[0]
        return _per_word(text.split(), pieces)


def _per_word(words: list[str], pieces: list[dict]) -> list[tuple[float, float]]:
    """Whisper's words (its tokenizer splits "o'clock" in two, and punctuation) back onto the
    text's words, by their characters."""
    out = []
    i = 0
    for word in words:
        target = word.replace(" ", "")
        start = end = pieces[min(i, len(pieces) - 1)]["start"] if pieces else 0.0
        got = ""
        while i < len(pieces) and len(got) < len(target):
            got += pieces[i]["word"].strip()
            end = pieces[i]["end"]
            i += 1
        out.append((float(start), float(end)))
    return out


def quiet_runs(audio: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches quiet enough to be pauses between words."""
    hop = int(FRAME_S * SAMPLE_RATE_HZ)
    n = len(audio) // hop
    if n == 0:
        return []
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
    quiet = rms <= rms.max() * 10 ** (-QUIET_BELOW_PEAK_DB / 20)
    runs = []
    start = None
    for i, q in enumerate(np.append(quiet, False)):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * FRAME_S >= MIN_QUIET_S:
                runs.append((start * FRAME_S, i * FRAME_S))
            start = None
    return runs


def refine(
    audio: np.ndarray, words: list[str], estimates: list[tuple[float, float]]
) -> list[WordTime]:
    """Move Whisper's boundaries onto the pauses (see the module docstring)."""
    duration = len(audio) / SAMPLE_RATE_HZ
    runs = quiet_runs(audio)
    inner = [r for r in runs if 0 < r[0] and r[1] < duration]  # not leading/trailing silence
    boundaries = [(estimates[k][1] + estimates[k + 1][0]) / 2 for k in range(len(words) - 1)]
    shift = _common_shift(boundaries, inner)
    boundaries = [b + shift for b in boundaries]
    matched = _match(boundaries, inner)
    starts = [estimates[0][0]] + [0.0] * (len(words) - 1)
    ends = [0.0] * (len(words) - 1) + [estimates[-1][1]]
    for k, b in enumerate(boundaries):
        run = matched[k]
        ends[k], starts[k + 1] = (run[0], run[1]) if run is not None else (b, b)
    # The first word starts at the first sound, the last ends at the last one.
    if runs and runs[0][0] == 0.0:
        starts[0] = runs[0][1]
    else:
        starts[0] = 0.0
    if runs and runs[-1][1] >= duration - FRAME_S:
        ends[-1] = runs[-1][0]
    else:
        ends[-1] = duration
    return [
        WordTime(w, round(s, 3), round(max(e, s), 3))
        for w, s, e in zip(words, starts, ends, strict=True)
    ]


def _common_shift(boundaries: list[float], runs: list[tuple[float, float]]) -> float:
    """Whisper's boundaries are late or early by about the same amount for every word of an
    utterance: the median offset to the nearest pause, removed before matching."""
    offsets = []
    for b in boundaries:
        centres = [(r[0] + r[1]) / 2 - b for r in runs]
        nearest = min(centres, key=abs, default=None)
        if nearest is not None and abs(nearest) <= MAX_MOVE_S:
            offsets.append(nearest)
    return float(np.median(offsets)) if offsets else 0.0


def _match(
    boundaries: list[float], runs: list[tuple[float, float]]
) -> list[tuple[float, float] | None]:
    """In-order assignment of boundaries to quiet runs, minimising the distance moved (a run
    takes at most one boundary; leaving a boundary alone costs ``UNMATCHED_COST_S``)."""
    n, m = len(boundaries), len(runs)
    inf = float("inf")
    cost = np.full((n + 1, m + 1), inf)
    cost[0, :] = 0.0
    choice = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 skip run, 1 unmatched, 2 match
    for k in range(1, n + 1):
        cost[k, 0] = cost[k - 1, 0] + UNMATCHED_COST_S
        choice[k, 0] = 1
        for j in range(1, m + 1):
            options = [cost[k, j - 1], cost[k - 1, j] + UNMATCHED_COST_S, inf]
            distance = _distance(boundaries[k - 1], runs[j - 1])
            if distance <= MAX_MOVE_S:
                options[2] = cost[k - 1, j - 1] + distance
            best = int(np.argmin(options))
            cost[k, j], choice[k, j] = options[best], best
    out: list[tuple[float, float] | None] = [None] * n
    k, j = n, m
    while k > 0:
        if j == 0 or choice[k, j] == 1:
            k -= 1
        elif choice[k, j] == 0:
            j -= 1
        else:
            out[k - 1] = runs[j - 1]
            k, j = k - 1, j - 1
    return out


def _distance(t: float, run: tuple[float, float]) -> float:
    return 0.0 if run[0] <= t <= run[1] else min(abs(t - run[0]), abs(t - run[1]))


# -- the aligner as a worker of the TTS runtime --------------------------------------------------
ALIGN_WORKER = "aligner"


@dataclass(frozen=True)
class AlignRequest:
    pcm: bytes  # one generation's audio: s16le mono at MODEL_RATE_HZ
    text: str


class AlignService:
    """A ``WordAligner`` on its own worker thread (never the event loop), one job per
    generation; ``load`` opens a CTranslate2 Whisper model directory on the CPU."""

    def __init__(self, aligner: WordAligner) -> None:
        from speech_common.batching import BatchWorker

        self.aligner = aligner
        self._worker = BatchWorker(ALIGN_WORKER, self._run, max_batch=4)

    @classmethod
    def load(cls, model_dir: str, cpu_threads: int) -> AlignService:
        from faster_whisper import WhisperModel

        model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=cpu_threads)
        return cls(WordAligner(model))

    def _run(self, requests: list[AlignRequest]) -> list[list[WordTime] | BaseException]:
        import soxr

        out: list[list[WordTime] | BaseException] = []
        for request in requests:
            pcm = np.frombuffer(request.pcm, "<i2").astype(np.float32) / 32768.0
            audio = soxr.resample(pcm, MODEL_RATE_HZ, SAMPLE_RATE_HZ).astype(np.float32)
            try:
                out.append(self.aligner.align(audio[: 30 * SAMPLE_RATE_HZ], request.text))
            except Exception as exc:  # noqa: BLE001 (this job fails, not the batch)
                out.append(exc)
        return out

    def start(self) -> AlignService:
        self._worker.start()
        return self

    def stop(self) -> None:
        self._worker.stop()

    @property
    def healthy(self) -> bool:
        return self._worker.healthy

    def submit(self, request: AlignRequest, stream_id: Any) -> Any:
        return self._worker.submit(request, stream_id=stream_id)

    def cancel_stream(self, stream_id: Any) -> int:
        return self._worker.cancel_stream(stream_id)
