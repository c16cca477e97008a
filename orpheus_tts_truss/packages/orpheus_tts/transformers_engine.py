"""Token engine on plain transformers: runs anywhere (CPU included), one thread per generation.

Not a continuous-batching engine: each request decodes alone with its own KV cache on a pool of
``max_concurrency`` threads. It exists for CPU serving, dummy weights and tests; production GPU
serving uses ``vllm_engine``. Sampling (repetition penalty → audio constraint → temperature →
top-p) is done here so that an optional audio-grammar mask applies before top-p.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from orpheus_tts.engine import ABORTED_IDS_KEPT, DONE, EngineError, SamplingParams, ThreadBridge
from orpheus_tts.tokens import (
    AUDIO_TOKEN_BASE,
    CODEBOOK_SIZE,
    END_OF_SPEECH_TOKEN_ID,
    SLOTS_PER_FRAME,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioConstraint:
    """Restrict sampling to the audio token of the next slot; end with 128258.

    ``max_frames`` forces the stop token after that many frames (dummy weights: a random model
    must end somewhere); ``min_frames`` forbids it before that many (a random model must also say
    something: it stopped at once on ~1 % of short generations). The stop token is otherwise
    allowed at every frame boundary.
    """

    max_frames: int | None = None
    min_frames: int = 0

    def may_stop(self, generated: int) -> bool:
        return generated >= self.min_frames * SLOTS_PER_FRAME

    def allowed(self, generated: int, frames_cap: int | None) -> tuple[int, int] | None:
        """Token id range [lo, hi) allowed at this step, or None when only the stop token is."""
        caps = [c for c in (self.max_frames, frames_cap) if c is not None]
        if caps and generated >= min(caps) * SLOTS_PER_FRAME:
            return None
        slot = generated % SLOTS_PER_FRAME
        lo = AUDIO_TOKEN_BASE + slot * CODEBOOK_SIZE
        return lo, lo + CODEBOOK_SIZE


def sample_next(
    logits: torch.Tensor,
    presence: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    allowed: tuple[int, int] | None | bool = False,
    may_stop: bool = True,
) -> int:
    """One sampling step over a (vocab,) logits vector.

    ``presence`` marks ids seen so far (prompt + output) for the repetition penalty (HF/vLLM
    convention: positive logits divided, negative multiplied). ``allowed``: False = no mask, a
    range = only those ids (plus the stop token at a frame boundary), None = the stop token only.
    The mask applies before temperature and top-p, so top-p never empties the candidate set.
    """
    if allowed is None:
        return END_OF_SPEECH_TOKEN_ID
    if allowed is False:
        candidates = None
        scores = logits.float().clone()
        seen = presence
    else:
        lo, hi = allowed
        ids = torch.arange(lo, hi, device=logits.device)
        if lo == AUDIO_TOKEN_BASE and may_stop:  # frame boundary: ending here loses nothing
            stop = torch.tensor([END_OF_SPEECH_TOKEN_ID], device=logits.device)
            ids = torch.cat([ids, stop])
        candidates = ids
        scores = logits[ids].float()
        seen = presence[ids]
    if params.repetition_penalty != 1.0:
        penalised = scores[seen]
        scores[seen] = torch.where(
            penalised > 0,
            penalised / params.repetition_penalty,
            penalised * params.repetition_penalty,
        )
    if params.temperature == 0:
        index = int(torch.argmax(scores))
    else:
        probs = torch.softmax(scores / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs[before >= params.top_p] = 0.0  # always keeps the most likely id
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        index = int(torch.multinomial(probs, 1, generator=generator))
    return index if candidates is None else int(candidates[index])


class TransformersEngine:
    """``TokenEngine`` over a Hugging Face causal LM (real checkpoint or dummy)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str = "cpu",
        max_model_len: int = 4096,
        max_concurrency: int = 2,
        constraint: AudioConstraint | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.max_model_len = max_model_len
        self.constraint = constraint
        self.vocab_size = int(model.config.vocab_size)
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="orpheus-gen")
        self._cancels: dict[str, threading.Event] = {}
        self._closed = False
        # The latest aborted request ids (observability, tests); bounded: a replica runs for weeks.
        self.aborted: deque[str] = deque(maxlen=ABORTED_IDS_KEPT)

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, *, device: str, dtype: str = "auto", **kwargs
    ) -> TransformersEngine:
        """Load a local checkpoint directory (config.json + safetensors)."""
        from transformers import AutoModelForCausalLM

        torch_dtype = (
            (torch.bfloat16 if device == "cuda" else torch.float32)
            if dtype == "auto"
            else getattr(torch, dtype)
        )
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype)
        return cls(model, device=device, **kwargs)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[int]:
        if request_id in self._cancels:
            raise EngineError(f"request id {request_id!r} is already running")
        max_new = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        if max_new < 1:
            raise EngineError(
                f"prompt of {len(prompt_ids)} tokens leaves no room in max_model_len "
                f"{self.max_model_len}"
            )
        cancel = threading.Event()
        self._cancels[request_id] = cancel
        bridge = ThreadBridge(on_gone=cancel.set)
        job = asyncio.get_running_loop().run_in_executor(
            self._executor, self._run, prompt_ids, params, max_new, cancel, bridge.push
        )
        finished = False
        try:
            async for item in bridge.items(request_id):
                if item in params.stop_token_ids:
                    finished = True  # the worker ends here too: not an abort
                yield item  # type: ignore[misc]
            finished = True
            await job
        finally:
            if not finished:
                cancel.set()
                self.aborted.append(request_id)
                logger.info("generation %s aborted", request_id)
            self._cancels.pop(request_id, None)

    async def abort(self, request_id: str) -> None:
        cancel = self._cancels.get(request_id)
        if cancel is not None:
            cancel.set()

    async def warmup(self) -> None:
        """One short generation (allocator, kernels) so the first client does not pay for it."""
        params = SamplingParams(max_tokens=SLOTS_PER_FRAME * 2, seed=0)
        prompt = [AUDIO_TOKEN_BASE] * 8
        count = 0
        async for _ in self.generate("warmup", prompt, params):
            count += 1
        logger.info("transformers engine warm (%d tokens)", count)

    def is_healthy(self) -> bool:
        """Pool threads catch every generation error (it goes to that request), so the engine
        serves until it is shut down."""
        return not self._closed

    def shutdown(self) -> None:
        self._closed = True
        for cancel in self._cancels.values():
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- worker thread ---------------------------------------------------------------------------
    @torch.inference_mode()
    def _run(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        cancel: threading.Event,
        push: Callable[[object], None],
    ) -> None:
        try:
            if not cancel.is_set():
                self._decode_loop(prompt_ids, params, max_new, cancel, push)
        except BaseException as exc:  # reported to the consumer, never lost in the pool
            push(exc)
            return
        push(DONE)

    def _decode_loop(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_new: int,
        cancel: threading.Event,
        push: Callable[[object], None],
    ) -> None:
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        presence = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        presence[torch.tensor(prompt_ids, device=self.device)] = True
        stop_ids = set(params.stop_token_ids)
        # The stop token must fit in max_new; the constraint ends on a frame boundary before.
        frames_cap = (max_new - 1) // SLOTS_PER_FRAME if self.constraint else None
        input_ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        for generated in range(max_new):
            if cancel.is_set():
                return
            out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            allowed: tuple[int, int] | None | bool = False
            may_stop = True
            if self.constraint is not None:
                allowed = self.constraint.allowed(generated, frames_cap)
                may_stop = self.constraint.may_stop(generated)
            token = sample_next(out.logits[0, -1], presence, params, generator, allowed, may_stop)
            push(token)
            if token in stop_ids:
                return
            presence[token] = True
            input_ids = torch.tensor([[token]], device=self.device)
