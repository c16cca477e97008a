"""The Orpheus truss's settings: one typed model, filled from ``model_metadata`` with env
overrides (``speech_common.settings``: one coercion rule, one naming scheme).

``SessionLimits`` is the part a session needs (its core takes only that); ``OrpheusSettings``
adds the runtime's (engine, SNAC, aligner). Both are one flat set of ``model_metadata`` keys.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from orpheus_tts.snac_stream import WindowPolicy
from speech_common.settings import Settings
from speech_common.text_buffer import DEFAULT_MAX_CHARS

ORPHEUS_HF_REPO = "canopylabs/orpheus-3b-0.1-ft"  # the checkpoint (and Together's model name)

# The protocol of a session (orpheus_tts.dialects): "auto" picks Together's when the handshake
# carries its query parameters and Fish Audio's for a MessagePack first frame.
Dialect = Literal["auto", "baseten", "together", "fish"]
DIALECTS: tuple[str, ...] = get_args(Dialect)


class SessionLimits(Settings):
    """Per-session limits and pipeline shape."""

    # One text frame: a word or a few; 4096 characters is far beyond any real word stream.
    max_frame_chars: int = Field(4096, ge=1)
    # All text of one session: ~100k characters is well over an hour of speech.
    max_session_chars: int = Field(100_000, ge=1)
    # Characters per generation: Orpheus drifts on longer prompts.
    max_chunk_chars: int = Field(DEFAULT_MAX_CHARS, ge=1)
    # Seconds to wait for the config frame after the connection opens.
    first_frame_timeout_s: float = Field(10.0, gt=0)
    # Seconds without a client frame or audio sent before the session is closed.
    idle_timeout_s: float = Field(300.0, gt=0)
    # Generations started before the previous one has been fully sent.
    lookahead_generations: int = Field(1, ge=0)
    # Generations of one session running in the engine at once (2 = the next one is generated
    # in parallel with the current one instead of after it).
    engine_generations: int = Field(1, ge=1)
    # Open sessions per replica before new ones are refused with 1013 (try again later); one
    # H100 sustains ~24 real-time streams, and most open sessions are idle between sentences.
    max_sessions: int = Field(64, ge=1)
    # Admission control (speech_common.admission): sessions one replica serves in time
    # (benchmarked), the SNAC queue wait, the wait for a generation's first audio and the
    # generations' speed (x real time, orpheus_tts.pace) beyond which new ones are refused.
    admission_capacity_sessions: int = Field(64, ge=1)
    admission_max_queue_wait_s: float = Field(0.5, gt=0)
    admission_max_first_audio_s: float = Field(1.0, gt=0)
    admission_min_speed_x: float = Field(1.0, ge=0)
    # "together" or "fish" for a gateway that drops query strings.
    dialect: Dialect = "auto"


class OrpheusSettings(SessionLimits):
    """The session limits plus the runtime: engine, SNAC decoder, word aligner."""

    orpheus_engine: Literal["vllm", "transformers"] = "vllm"  # transformers runs anywhere
    orpheus_device: Literal["cuda", "cpu"] = "cuda"
    orpheus_dummy_weights: bool = False  # random tiny Llama + random SNAC, local tokenizer
    orpheus_model_dir: str = "/app/weights/orpheus"
    snac_model_dir: str = "/app/weights/snac"
    # vLLM's engine arguments, under vLLM's names.
    max_model_len: int = Field(4096, ge=64)  # prompt + generated tokens per generation
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # the rest is SNAC's
    max_num_seqs: int = Field(64, ge=1)  # concurrent sequences per step
    enable_prefix_caching: bool = True
    orpheus_dtype: str = "bfloat16"  # vLLM dtype; transformers: "auto" = bf16 on GPU, fp32 CPU
    orpheus_quantization: str = ""  # vLLM quantization, e.g. "fp8" on H100; "" = none
    orpheus_max_concurrency: int = Field(2, ge=1)  # transformers engine: parallel generations
    orpheus_constrain_audio: bool = False  # transformers: mask sampling to valid audio slots
    orpheus_dummy_max_frames: int = Field(48, ge=1)  # dummy weights: speech ends by then (4.1 s)
    snac_max_batch: int = Field(16, ge=1)  # SNAC windows per batched decode
    snac_max_wait_ms: float = Field(2.0, ge=0)  # wait this long for a decode batch to fill
    snac_left_context_frames: int = Field(2, ge=0)
    snac_hop_frames: int = Field(1, ge=1)
    snac_right_context_frames: int = Field(2, ge=0)
    snac_noise: bool = True  # SNAC's NoiseBlock as trained; False = deterministic decode
    snac_compile: bool = False  # torch.compile(dynamic=True) the SNAC decoder (GPU)
    snac_device: str = ""  # "" = orpheus_device
    # Word timestamps: a CTranslate2 Whisper model directory for the forced aligner
    # (orpheus_tts.alignment); "" = not offered (sessions asking for them get an error).
    aligner_model: str = ""
    aligner_cpu_threads: int = Field(2, ge=1)

    @property
    def window_policy(self) -> WindowPolicy:
        return WindowPolicy(
            self.snac_left_context_frames, self.snac_hop_frames, self.snac_right_context_frames
        )
