"""Orpheus prompt as token ids: ``[SOH] + tok("{voice}: {text}") + [EOT, EOH, SOA, SOS]``.

Built as ids, never as a string the engine re-tokenises (special tokens would be split).
"""

from __future__ import annotations

from typing import Any, Protocol

from orpheus_tts.tokens import (
    BOS_TOKEN_ID,
    END_OF_HUMAN_TOKEN_ID,
    END_OF_TEXT_TOKEN_ID,
    START_OF_AI_TOKEN_ID,
    START_OF_HUMAN_TOKEN_ID,
    START_OF_SPEECH_TOKEN_ID,
)

VOICES: tuple[str, ...] = ("tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe")
DEFAULT_VOICE = "tara"
EMOTIVE_TAGS: tuple[str, ...] = (
    "<laugh>",
    "<chuckle>",
    "<sigh>",
    "<cough>",
    "<sniffle>",
    "<groan>",
    "<yawn>",
    "<gasp>",
)

PROMPT_PREFIX_IDS: tuple[int, ...] = (START_OF_HUMAN_TOKEN_ID,)
PROMPT_SUFFIX_IDS: tuple[int, ...] = (
    END_OF_TEXT_TOKEN_ID,
    END_OF_HUMAN_TOKEN_ID,
    START_OF_AI_TOKEN_ID,
    START_OF_SPEECH_TOKEN_ID,
)


class TextTokenizer(Protocol):
    """What the prompt builder needs: a Hugging Face style ``tokenizer(text)["input_ids"]``."""

    def __call__(self, text: str) -> Any: ...


def build_prompt_ids(tokenizer: TextTokenizer, voice: str, text: str) -> list[int]:
    """Prompt ids for one generation; the text ids start with exactly one BOS (128000)."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}; expected one of {', '.join(VOICES)}")
    text_ids = [int(i) for i in tokenizer(f"{voice}: {text}")["input_ids"]]
    # Llama-3's tokenizer adds BOS itself; a tokenizer configured without it must not lose it.
    if not text_ids or text_ids[0] != BOS_TOKEN_ID:
        text_ids.insert(0, BOS_TOKEN_ID)
    return [*PROMPT_PREFIX_IDS, *text_ids, *PROMPT_SUFFIX_IDS]
