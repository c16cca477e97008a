"""The loaded runtime (engine + tokenizer + SNAC decode service + synthesizer).

``load_runtime(settings)`` is synchronous, for ``model.load()`` (a thread with no event loop): it
loads everything and warms both the SNAC decoder and the engine before returning. The engine
warm-up coroutine runs on a private loop in a helper thread; the vLLM engine owns its own loop
thread (see ``vllm_engine``), so it streams to the server loop afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orpheus_tts.audio_format import EncodeService
from orpheus_tts.engine import TokenEngine
from orpheus_tts.settings import ORPHEUS_HF_REPO, OrpheusSettings
from orpheus_tts.snac_decoder import SnacCodec, SnacDecodeService, build_snac
from orpheus_tts.synth import Synthesizer

logger = logging.getLogger(__name__)

SNAC_HF_REPO = "hubertsiuzdak/snac_24khz"
# vLLM 0.33.0 needs torch 2.14.0, whose wheels are CUDA 13.0 (cuDriverGetVersion 13000: host
# driver >= 580). The image carries NVIDIA's forward-compatibility driver for older hosts
# (config.yaml build_commands: cuda-compat-13-0).
VLLM_CUDA_VERSION = 13000
CUDA_COMPAT_DIRS = ("/usr/local/cuda-13.0/compat",)
CUDA_DRIVER_FIX = (
    "deploy on hosts whose NVIDIA driver is >= 580 (CUDA 13.0), or on a data-center GPU with "
    "NVIDIA's forward-compatibility package cuda-compat-13-0 in the image (orpheus_tts_truss "
    "config.yaml build_commands installs it in /usr/local/cuda-13.0/compat)"
)


@dataclass
class OrpheusRuntime:
    settings: OrpheusSettings
    engine: TokenEngine
    tokenizer: Any
    decoder: SnacDecodeService
    synthesizer: Synthesizer
    aligner: Any = None  # orpheus_tts.alignment.AlignService when aligner_model is set
    encoder: Any = None  # orpheus_tts.audio_format.EncodeService: FFmpeg's encoders

    def is_healthy(self) -> bool:
        aligner_ok = self.aligner is None or self.aligner.healthy
        encoder_ok = self.encoder is None or self.encoder.healthy
        return self.decoder.healthy and self.engine.is_healthy() and aligner_ok and encoder_ok

    def shutdown(self) -> None:
        self.decoder.stop()
        self.engine.shutdown()
        if self.aligner is not None:
            self.aligner.stop()
        if self.encoder is not None:
            self.encoder.stop()


DUMMY_MIN_FRAMES = 4  # dummy weights speak at least this many frames (the first SNAC window)


class WeightsNotFound(RuntimeError):
    """Real weights were asked for and are not there."""


def _require_dir(path: str, repo: str, key: str, files: tuple[str, ...]) -> Path:
    p = Path(path)
    missing = [f for f in files if not (p / f).is_file()]
    if missing:
        raise WeightsNotFound(
            f"{repo} weights not found in {p} (missing {', '.join(missing)}). Mount them there "
            f"(config.yaml `weights:` source hf://{repo}, auth_secret_name hf_access_token: the "
            f"Baseten secret hf_access_token must hold a Hugging Face token with access to the "
            f"gated repo), or point {key.upper()} at a local copy, or set "
            f"ORPHEUS_DUMMY_WEIGHTS=1 to serve random weights for testing."
        )
    return p


def _run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, whether or not this thread has a loop."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, name="orpheus-warmup")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _check_device(device: str, what: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{what} is set to run on cuda but no GPU is visible. Deploy with a GPU "
            "(resources.accelerator) or run on CPU: ORPHEUS_ENGINE=transformers ORPHEUS_DEVICE=cpu "
            "(add ORPHEUS_DUMMY_WEIGHTS=1 without the real weights)."
        )


def check_cuda_driver(compat_dirs: tuple[str, ...] = CUDA_COMPAT_DIRS) -> Any:
    """Before anything in this process initialises CUDA (vLLM forks its engine core after):
    the host driver runs CUDA 13.0, or the image's forward-compatibility driver is loaded, or
    ``CudaDriverError`` names the fix (speech_common.cuda_driver)."""
    from speech_common.cuda_driver import ensure_cuda_driver

    return ensure_cuda_driver(
        VLLM_CUDA_VERSION,
        "vLLM 0.33 (torch 2.14, CUDA 13.0 wheels)",
        compat_dirs=compat_dirs,
        fix=CUDA_DRIVER_FIX,
    )


def uses_vllm(settings: OrpheusSettings) -> bool:
    """Dummy weights always run on the transformers engine."""
    return settings.orpheus_engine == "vllm" and not settings.orpheus_dummy_weights


def _build_engine(settings: OrpheusSettings) -> tuple[TokenEngine, Any]:
    from orpheus_tts.transformers_engine import AudioConstraint, TransformersEngine

    if settings.orpheus_dummy_weights:
        from orpheus_tts.dummy import build_dummy_llama, build_dummy_tokenizer

        if settings.orpheus_engine == "vllm":
            logger.warning("dummy weights run on the transformers engine, not vLLM")
        engine = TransformersEngine(
            build_dummy_llama(settings.max_model_len),
            device=settings.orpheus_device,
            max_model_len=settings.max_model_len,
            max_concurrency=settings.orpheus_max_concurrency,
            # A random Llama rarely emits audio tokens: constrain it (the plumbing stays real).
            constraint=AudioConstraint(
                max_frames=settings.orpheus_dummy_max_frames, min_frames=DUMMY_MIN_FRAMES
            ),
        )
        return engine, build_dummy_tokenizer()

    model_dir = _require_dir(
        settings.orpheus_model_dir, ORPHEUS_HF_REPO, "orpheus_model_dir", ("config.json",)
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if uses_vllm(settings):
        from orpheus_tts.vllm_engine import VllmEngine

        if settings.orpheus_device != "cuda":
            raise RuntimeError("orpheus_engine=vllm needs orpheus_device=cuda (a GPU)")
        engine: TokenEngine = VllmEngine(
            model_dir,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            dtype=settings.orpheus_dtype,
            quantization=settings.orpheus_quantization or None,
            max_num_seqs=settings.max_num_seqs,
            enable_prefix_caching=settings.enable_prefix_caching,
        )
    else:
        dtype = "auto" if settings.orpheus_device == "cpu" else settings.orpheus_dtype
        engine = TransformersEngine.from_pretrained(
            model_dir,
            device=settings.orpheus_device,
            dtype=dtype,
            max_model_len=settings.max_model_len,
            max_concurrency=settings.orpheus_max_concurrency,
            constraint=AudioConstraint() if settings.orpheus_constrain_audio else None,
        )
    return engine, tokenizer


def load_runtime(settings: OrpheusSettings) -> OrpheusRuntime:
    """Load, start and warm everything (sync; call from ``model.load()``)."""
    snac_device = settings.snac_device or settings.orpheus_device
    # vLLM forks its engine-core process (its default start method). Nothing in this process may
    # initialise CUDA before that fork, not even torch.cuda.is_available() (without
    # PYTORCH_NVML_BASED_CUDA_CHECK it creates a CUDA context): "Cannot re-initialize CUDA in
    # forked subprocess". So with vLLM the device checks run after the engine has started.
    engine_forks = uses_vllm(settings)
    if engine_forks:
        # First: a driver too old for CUDA 13 fails here with its fix, not inside vLLM.
        check_cuda_driver()
    else:
        _check_device(settings.orpheus_device, "orpheus_device")
        _check_device(snac_device, "snac_device")
    policy = settings.window_policy
    snac_dir = None
    if not settings.orpheus_dummy_weights:
        snac_dir = _require_dir(
            settings.snac_model_dir,
            SNAC_HF_REPO,
            "snac_model_dir",
            ("config.json", "pytorch_model.bin"),
        )

    engine, tokenizer = _build_engine(settings)
    decoder: SnacDecodeService | None = None
    try:
        if engine_forks:
            _check_device(snac_device, "snac_device")
        codec = SnacCodec(
            build_snac(snac_dir, device=snac_device, noise=settings.snac_noise),
            device=snac_device,
            compile=settings.snac_compile,
        )
        # Head windows (no left context yet) are shorter than steady ones: warm every size.
        codec.warmup(
            range(policy.frames_before_first_audio, policy.window_frames + 1),
            settings.snac_max_batch,
        )
        decoder = SnacDecodeService(
            codec, max_batch=settings.snac_max_batch, max_wait_ms=settings.snac_max_wait_ms
        ).start()
        _run_blocking(engine.warmup())
    except BaseException:
        if decoder is not None:
            decoder.stop()
        engine.shutdown()
        raise
    synthesizer = Synthesizer(engine, tokenizer, decoder, policy)
    aligner = None
    if settings.aligner_model:
        from orpheus_tts.alignment import AlignService
        from speech_common.settings import model_dir

        path = model_dir(settings.aligner_model, "aligner_model")
        aligner = AlignService.load(path, settings.aligner_cpu_threads).start()
    encoder = EncodeService().start()  # mp3/opus/G.711 off the event loop
    logger.info(
        "orpheus runtime ready: engine=%s device=%s dummy=%s window=%s",
        settings.orpheus_engine,
        settings.orpheus_device,
        settings.orpheus_dummy_weights,
        policy,
    )
    return OrpheusRuntime(settings, engine, tokenizer, decoder, synthesizer, aligner, encoder)
