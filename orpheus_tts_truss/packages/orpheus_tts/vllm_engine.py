"""Production token engine: vLLM's async engine (continuous batching), imported lazily.

vLLM cannot be installed on the CPU dev machine, so this module is written against vLLM's
documented API (``AsyncEngineArgs``, ``AsyncLLM.from_engine_args``, ``generate(prompt,
sampling_params, request_id)``, ``abort``, ``TokensPrompt``, ``RequestOutputKind.DELTA``) and is
not exercised by the CPU tests.

The engine lives on its own event loop in its own thread: ``load()`` runs in a thread with no
loop, while ``AsyncLLM`` binds its output handler to the loop it first runs on. Owning that loop
lets ``load()`` warm the engine synchronously, and any caller loop (the server's, a test's) can
stream from it: each ``generate`` is pumped on the engine loop and forwarded thread-safely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from orpheus_tts.engine import ABORTED_IDS_KEPT, DONE, EngineError, SamplingParams, ThreadBridge
from orpheus_tts.tokens import AUDIO_TOKEN_BASE, SLOTS_PER_FRAME

logger = logging.getLogger(__name__)

# Weight load + torch.compile + CUDA graph capture of a 3B model on a first start; below the
# truss's startup_threshold_seconds (3000) so this error is logged before the probe restarts us.
ENGINE_START_TIMEOUT_S = 2700
# The warm-up: a short generation with the sampling real sessions use. Unseeded, like them: vLLM's
# sampler takes its PyTorch path for a request with a seed (per-request generators), so a seeded
# warm-up would leave FlashInfer's top-p sampler (JIT-compiled at its first use) to the first
# client. A few frames, from an audio-token prompt.
WARMUP_PROMPT = [AUDIO_TOKEN_BASE] * 16
WARMUP_FRAMES = 4


def warmup_params(defaults: SamplingParams | None = None) -> SamplingParams:
    """What the warm-up asks for: real sessions' sampling (temperature, top_p,
    repetition_penalty, stop tokens; no seed), a few frames long."""
    defaults = defaults or SamplingParams()
    return replace(defaults, max_tokens=SLOTS_PER_FRAME * WARMUP_FRAMES, seed=None)


def _import_vllm() -> dict[str, Any]:
    try:
        from vllm import AsyncEngineArgs, TokensPrompt
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind
    except ImportError as exc:
        raise RuntimeError(
            "orpheus_engine=vllm needs the vllm package and a GPU (the truss's GPU image installs "
            "it); for CPU use ORPHEUS_ENGINE=transformers ORPHEUS_DEVICE=cpu"
        ) from exc
    try:  # vLLM >= 0.8: the V1 engine
        from vllm.v1.engine.async_llm import AsyncLLM as Engine
    except ImportError:  # older releases
        from vllm import AsyncLLMEngine as Engine
    return {
        "AsyncEngineArgs": AsyncEngineArgs,
        "TokensPrompt": TokensPrompt,
        "SamplingParams": VllmSamplingParams,
        "RequestOutputKind": RequestOutputKind,
        "Engine": Engine,
    }


class VllmEngine:
    """``TokenEngine`` over vLLM; a unique request id per generation, abort on cancel."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.85,
        dtype: str = "bfloat16",
        quantization: str | None = None,
        max_num_seqs: int = 64,
        enable_prefix_caching: bool = True,
        seed: int = 0,
    ) -> None:
        self._vllm = _import_vllm()
        self.max_model_len = max_model_len
        self._engine_args = self._vllm["AsyncEngineArgs"](
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype,
            max_model_len=max_model_len,  # the checkpoint says 131072: KV cache would not fit
            gpu_memory_utilization=gpu_memory_utilization,
            quantization=quantization or None,
            max_num_seqs=max_num_seqs,
            enable_prefix_caching=enable_prefix_caching,  # voice prefix shared across requests
            seed=seed,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vllm-engine-loop", daemon=True
        )
        self._thread.start()
        self._engine = self._on_engine_loop(self._create(), timeout=ENGINE_START_TIMEOUT_S)
        # The latest aborted request ids (observability, tests); bounded: a replica runs for weeks.
        self.aborted: deque[str] = deque(maxlen=ABORTED_IDS_KEPT)

    async def _create(self) -> Any:
        # Created on the engine loop so its output handler is bound to that loop.
        return self._vllm["Engine"].from_engine_args(self._engine_args)

    def _on_engine_loop(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _sampling_params(self, params: SamplingParams, prompt_len: int) -> Any:
        max_tokens = min(params.max_tokens, self.max_model_len - prompt_len)
        if max_tokens < 1:
            raise EngineError(
                f"prompt of {prompt_len} tokens leaves no room in max_model_len {self.max_model_len}"
            )
        return self._vllm["SamplingParams"](
            temperature=params.temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            max_tokens=max_tokens,
            stop_token_ids=list(params.stop_token_ids),  # config EOS 128001 is not speech end
            seed=params.seed,
            output_kind=self._vllm["RequestOutputKind"].DELTA,  # only new ids per output
            detokenize=False,  # we need ids, not text
            skip_special_tokens=False,
        )

    async def _pump(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        push: Callable[[object], None],
    ) -> None:
        """Runs on the engine loop; cancelling it makes vLLM's generate() abort the request."""
        try:
            sampling = self._sampling_params(params, len(prompt_ids))
            prompt = self._vllm["TokensPrompt"](prompt_token_ids=prompt_ids)
            async for output in self._engine.generate(prompt, sampling, request_id):
                ids = list(output.outputs[0].token_ids)
                if ids:
                    push(ids)
                if output.finished:
                    break
            push(DONE)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            push(exc)

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[int]:
        bridge = ThreadBridge()  # a closed caller loop: the finally below aborts
        pump: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(
            self._pump(request_id, prompt_ids, params, bridge.push), self._loop
        )
        finished = False
        try:
            async for item in bridge.items(request_id):
                for token in item:  # type: ignore[attr-defined]
                    if token in params.stop_token_ids:
                        finished = True  # vLLM finishes the request with this token
                    yield token
            finished = True
        finally:
            if not finished:
                pump.cancel()  # cancels the pump task on the engine loop → vLLM aborts
                self.aborted.append(request_id)
                asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop)
                logger.info("generation %s aborted", request_id)

    async def abort(self, request_id: str) -> None:
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._engine.abort(request_id), self._loop)
        )

    async def warmup(self) -> None:
        """A short generation the way real requests run (``warmup_params``): first-request
        allocations and the sampler's kernels happen here, not for a client."""
        params = warmup_params()
        count = 0
        async for _ in self.generate("warmup", WARMUP_PROMPT, params):
            count += 1
        logger.info("vLLM engine warm (%d tokens, unseeded top-p sampling)", count)

    def is_healthy(self) -> bool:
        """The engine loop thread runs and vLLM does not report its engine core dead
        (``AsyncLLM.errored``: the engine-core process died or its output handler stopped)."""
        return self._thread.is_alive() and not getattr(self._engine, "errored", False)

    def shutdown(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._engine.shutdown)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        except RuntimeError:  # loop already closed
            pass
