"""Prompt ids and the dummy tokenizer's interface (what the real Llama-3 tokenizer returns)."""

from __future__ import annotations

import pytest

from orpheus_tts.dummy import build_dummy_tokenizer
from orpheus_tts.prompt import DEFAULT_VOICE, VOICES, build_prompt_ids


def test_voices():
    assert DEFAULT_VOICE == "tara"
    assert set(VOICES) == {"tara", "leah", "jess", "leo", "dan", "mia", "zac", "zoe"}


def test_dummy_tokenizer_adds_bos_and_maps_bytes():
    tok = build_dummy_tokenizer()
    ids = tok("zoe: Hé")["input_ids"]
    assert ids == [128000, *"zoe: Hé".encode()]
    assert tok.decode(ids, skip_special_tokens=True) == "zoe: Hé"


def test_prompt_layout():
    ids = build_prompt_ids(build_dummy_tokenizer(), "leo", "Hi <laugh>")
    assert ids == [128259, 128000, *b"leo: Hi <laugh>", 128009, 128260, 128261, 128257]


def test_bos_added_once_whatever_the_tokenizer_does():
    def no_bos(text):
        return {"input_ids": list(text.encode())}

    def with_bos(text):
        return {"input_ids": [128000, *text.encode()]}

    assert build_prompt_ids(no_bos, "tara", "a") == build_prompt_ids(with_bos, "tara", "a")
    assert build_prompt_ids(no_bos, "tara", "a").count(128000) == 1


def test_unknown_voice():
    with pytest.raises(ValueError, match="unknown voice"):
        build_prompt_ids(build_dummy_tokenizer(), "bob", "hi")
