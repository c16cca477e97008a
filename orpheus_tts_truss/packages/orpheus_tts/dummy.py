"""``--dummy-weights``: a tiny random Llama with Orpheus's vocabulary, a local byte-level tokenizer
and a random-weight SNAC, so the whole real pipeline serves on CPU without downloads (like vLLM's
``load_format="dummy"``). The audio is noise; the plumbing, timing and protocol are real.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

from orpheus_tts.tokens import (
    BOS_TOKEN_ID,
    END_OF_SPEECH_TOKEN_ID,
    END_OF_TEXT_TOKEN_ID,
    PAD_TOKEN_ID,
    VOCAB_SIZE,
)

logger = logging.getLogger(__name__)

LLAMA3_TEXT_VOCAB = 128256  # ids below this are Llama-3's text + reserved special tokens
BYTE_VOCAB = 256
# Tiny model: big enough to exercise KV cache and sampling, fast on 2 CPU cores.
DUMMY_HIDDEN = 64
DUMMY_LAYERS = 2
DUMMY_HEADS = 4
DUMMY_KV_HEADS = 2
DUMMY_INTERMEDIATE = 128


def _byte_symbols() -> list[str]:
    """GPT-2 byte-level symbols, indexed by byte value (so a byte's token id is the byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(BYTE_VOCAB):
        if b not in symbols:
            symbols[b] = chr(BYTE_VOCAB + extra)
            extra += 1
    return [symbols[b] for b in range(BYTE_VOCAB)]


@functools.lru_cache(maxsize=1)
def build_dummy_tokenizer() -> Any:
    """A byte-level tokenizer laid out like Llama-3's ids: bytes 0..255, BOS 128000, EOT 128009.

    Called as ``tokenizer(text)["input_ids"]``, it returns ``[128000, byte ids...]`` like the real
    tokenizer does (one id per byte instead of BPE merges).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    # Llama-3 reserves 128000..128255 for special tokens; fill the gap so ids line up.
    for i in range(BYTE_VOCAB, BOS_TOKEN_ID):
        vocab[f"<|filler_{i}|>"] = i
    specials = {
        BOS_TOKEN_ID: "<|begin_of_text|>",
        BOS_TOKEN_ID + 1: "<|end_of_text|>",
        END_OF_TEXT_TOKEN_ID: "<|eot_id|>",
    }
    for i in range(BOS_TOKEN_ID, LLAMA3_TEXT_VOCAB):
        vocab[specials.get(i, f"<|reserved_special_token_{i - BOS_TOKEN_ID}|>")] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", BOS_TOKEN_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )


# Orpheus 3B = Llama 3.2 3B (canopylabs/orpheus-3b-0.1-ft config.json) with Orpheus's vocabulary.
ORPHEUS_3B_SHAPE = {
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 28,
    "num_attention_heads": 24,
    "num_key_value_heads": 8,
    "rope_theta": 500000.0,
}
DUMMY_SHAPE = {
    "hidden_size": DUMMY_HIDDEN,
    "intermediate_size": DUMMY_INTERMEDIATE,
    "num_hidden_layers": DUMMY_LAYERS,
    "num_attention_heads": DUMMY_HEADS,
    "num_key_value_heads": DUMMY_KV_HEADS,
}


def build_random_llama(
    shape: dict[str, Any],
    max_model_len: int = 4096,
    seed: int = 0,
    *,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """A random-weight Llama of ``shape`` with Orpheus's vocabulary (156940) and special ids,
    initialised directly on ``device`` in ``dtype`` (a 3B model: seconds on a GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=max_model_len,
        tie_word_embeddings=True,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=END_OF_SPEECH_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        **shape,
    )
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    logger.info("random Llama: %d params", sum(p.numel() for p in model.parameters()))
    return model.eval()


def build_dummy_llama(max_model_len: int = 4096, seed: int = 0) -> torch.nn.Module:
    """A 2-layer random Llama with Orpheus's vocabulary (156940) and special token ids."""
    return build_random_llama(DUMMY_SHAPE, max_model_len, seed)
