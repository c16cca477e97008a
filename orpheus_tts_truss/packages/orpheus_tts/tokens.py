"""Orpheus token ids and the sans-I/O parser from generated token ids to 7-token audio frames.

Each audio token carries its own slot: ``slot = (id - AUDIO_TOKEN_BASE) // CODEBOOK_SIZE``. A frame
is 7 tokens in slot order 0..6. Unlike the reference decoder (a running counter, code 0 dropped,
``> 4096``), a bad token here drops only the frame it breaks; parsing resyncs at the next slot-0
token, and code 0 is a valid code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# -- token ids (Llama-3 vocabulary + Orpheus specials) -----------------------------------------
BOS_TOKEN_ID = 128000
END_OF_TEXT_TOKEN_ID = 128009
START_OF_SPEECH_TOKEN_ID = 128257
END_OF_SPEECH_TOKEN_ID = 128258  # the speech stop token (config EOS 128001 is not it)
START_OF_HUMAN_TOKEN_ID = 128259
END_OF_HUMAN_TOKEN_ID = 128260
START_OF_AI_TOKEN_ID = 128261
END_OF_AI_TOKEN_ID = 128262
PAD_TOKEN_ID = 128263
AUDIO_TOKEN_BASE = 128266
VOCAB_SIZE = 156940  # 128256 Llama-3 + 10 specials + 7 x 4096 audio + 2 pad

# -- audio geometry ------------------------------------------------------------------------------
CODEBOOK_SIZE = 4096
SLOTS_PER_FRAME = 7
AUDIO_TOKEN_END = AUDIO_TOKEN_BASE + SLOTS_PER_FRAME * CODEBOOK_SIZE  # exclusive
SAMPLE_RATE_HZ = 24000
SAMPLES_PER_FRAME = 2048  # SNAC 24 kHz hop 512 x 4 latent steps per frame
BYTES_PER_SAMPLE = 2  # s16le
BYTES_PER_FRAME = SAMPLES_PER_FRAME * BYTES_PER_SAMPLE
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE_HZ  # 85.33 ms
TOKENS_PER_SECOND = SLOTS_PER_FRAME / FRAME_SECONDS  # 82.03 tokens/s is real time

# Which frame slots feed SNAC's three codebooks (level 0: 1 code/frame, 1: 2, 2: 4).
LEVEL0_SLOTS = (0,)
LEVEL1_SLOTS = (1, 4)
LEVEL2_SLOTS = (2, 3, 5, 6)


def audio_token_id(slot: int, code: int) -> int:
    """The token id that carries ``code`` in frame position ``slot``."""
    if not (0 <= slot < SLOTS_PER_FRAME and 0 <= code < CODEBOOK_SIZE):
        raise ValueError(f"slot {slot} / code {code} out of range")
    return AUDIO_TOKEN_BASE + slot * CODEBOOK_SIZE + code


def split_audio_token(token_id: int) -> tuple[int, int] | None:
    """``(slot, code)`` of an audio token, or None for any other id (text, specials, pad)."""
    if not (AUDIO_TOKEN_BASE <= token_id < AUDIO_TOKEN_END):
        return None
    offset = token_id - AUDIO_TOKEN_BASE
    return offset // CODEBOOK_SIZE, offset % CODEBOOK_SIZE


def frame_token_ids(frame: np.ndarray | list[int] | tuple[int, ...]) -> list[int]:
    """The 7 token ids of one frame of codes (the inverse of parsing; used by tests and dummies)."""
    return [audio_token_id(slot, int(code)) for slot, code in enumerate(frame)]


@dataclass
class ParserStats:
    frames: int = 0
    tokens: int = 0
    dropped_tokens: int = 0  # audio tokens lost to a broken frame or waiting for resync
    non_audio_tokens: int = 0  # text/special ids inside the audio stream (stop token excluded)
    resyncs: int = 0


class FrameParser:
    """Feeds generated token ids one by one and returns complete, validated frames.

    Sans-I/O: no model, no loop. A frame is a tuple of 7 codes in slot order.
    """

    def __init__(self) -> None:
        self._partial: list[int] = []
        self._synced = True  # at a frame boundary, expecting slot 0
        self.ended = False  # saw END_OF_SPEECH
        self.stats = ParserStats()

    def feed(self, token_id: int) -> tuple[int, ...] | None:
        """Consume one token; return a frame when this token completes one."""
        self.stats.tokens += 1
        if self.ended:
            return None
        if token_id == END_OF_SPEECH_TOKEN_ID:
            self.ended = True
            self._drop_partial()
            return None
        parsed = split_audio_token(token_id)
        if parsed is None:
            self.stats.non_audio_tokens += 1
            self._break()
            return None
        slot, code = parsed
        if self._synced and slot == len(self._partial):
            self._partial.append(code)
            if len(self._partial) == SLOTS_PER_FRAME:
                frame = tuple(self._partial)
                self._partial = []
                self.stats.frames += 1
                return frame
            return None
        # Wrong slot: drop the broken frame, resync here if this token starts a frame.
        self._break()
        if slot == 0:
            self._synced = True
            self.stats.resyncs += 1
            self._partial = [code]
        else:
            self.stats.dropped_tokens += 1
        return None

    def feed_many(self, token_ids: list[int]) -> list[tuple[int, ...]]:
        frames = []
        for token_id in token_ids:
            frame = self.feed(token_id)
            if frame is not None:
                frames.append(frame)
        return frames

    def _drop_partial(self) -> None:
        self.stats.dropped_tokens += len(self._partial)
        self._partial = []

    def _break(self) -> None:
        self._drop_partial()
        self._synced = False


def frames_to_codes(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 7) frame codes → SNAC codes of shapes (n,), (2n,), (4n,) in time order."""
    frames = np.asarray(frames, dtype=np.int64)
    if frames.ndim != 2 or frames.shape[1] != SLOTS_PER_FRAME:
        raise ValueError(f"frames must be (n, {SLOTS_PER_FRAME}), got {frames.shape}")
    level0 = frames[:, LEVEL0_SLOTS].reshape(-1)
    level1 = frames[:, LEVEL1_SLOTS].reshape(-1)
    level2 = frames[:, LEVEL2_SLOTS].reshape(-1)
    return level0, level1, level2


def validate_frames(frames: np.ndarray) -> np.ndarray:
    """Check shape and code range before a window is batched; returns an int64 (n, 7) array."""
    arr = np.asarray(frames)
    if arr.ndim != 2 or arr.shape[1] != SLOTS_PER_FRAME or arr.shape[0] == 0:
        raise ValueError(
            f"frames must be a non-empty (n, {SLOTS_PER_FRAME}) array, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"frame codes must be integers, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= CODEBOOK_SIZE:
        raise ValueError(f"frame codes outside [0, {CODEBOOK_SIZE})")
    return arr.astype(np.int64, copy=False)
