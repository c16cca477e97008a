"""Server settings: production defaults in config.yaml's model_metadata, env overrides for CPU
(speech_common.settings: one coercion rule, one naming scheme)."""

from __future__ import annotations

from pydantic import Field

from speech_common.settings import Settings, model_dir


class WhisperSettings(Settings):
    whisper_model: str = "/app/weights/whisper-large-v3-turbo"
    whisper_device: str = "cuda"
    whisper_compute_type: str = "float16"
    whisper_cpu_threads: int = Field(0, ge=0)  # 0 = CTranslate2's default
    # < 30 shortens the encoder window (CPU speed; see engine.py).
    whisper_encoder_context_s: float = Field(30.0, gt=0, le=30)
    whisper_max_batch: int = Field(16, ge=1)  # finals/partials per CTranslate2 batch
    # Beam search width for finals when a session's metadata names no beam_width (partials are
    # always greedy). 5 is Whisper's own transcribe() default.
    whisper_beam_width: int = Field(5, ge=1, le=10)
    vad_max_batch: int = Field(64, ge=1)
    turn_max_batch: int = Field(8, ge=1)  # Smart Turn scores per ONNX batch, across sessions
    speculative_finals: bool = True
    # Start the final this long before the silence timeout ends (never before the pad is in).
    # Pauses between words are mostly < 150 ms, so starting later wastes less work on
    # speculations that speech then voids.
    speculation_lead_ms: int = Field(150, ge=0)
    # Audio given to Whisper before the VAD's onset (at least the client's speech_pad_ms).
    preroll_ms: int = Field(0, ge=0)
    # Audio given to Whisper after the speech ends (at least speech_pad_ms): a word's soft
    # ending that Silero already calls silence. Up to min_silence_duration_ms -
    # speculation_lead_ms (150 ms with the published client's 300 ms) it costs no latency.
    postroll_ms: int = Field(150, ge=0)
    # A stream's first utterance whose VAD onset comes this soon after the stream's start
    # begins at the start: Silero fires late on a soft onset, and a stream that opens with
    # speech has nothing before it but the word's beginning ("Printing" of LJ001-0009).
    stream_head_ms: int = Field(500, ge=0)
    # Mid-stream, an onset after a pause of at least pause_preroll_after_ms gets up to
    # pause_preroll_ms of audio before it (the stream head's rule after every long pause).
    pause_preroll_ms: int = Field(250, ge=0)
    pause_preroll_after_ms: int = Field(500, ge=0)
    max_sessions: int = Field(64, ge=1)  # beyond this new sessions get 1013 (try again later)
    # Admission control (speech_common.admission): sessions one replica serves in time
    # (benchmarked), and the Whisper worker's load and final-queue wait that refuse more.
    admission_capacity_sessions: int = Field(64, ge=1)
    admission_max_queue_wait_s: float = Field(0.5, gt=0)
    first_frame_timeout_s: float = Field(30.0, gt=0)  # the metadata frame must come by then
    max_buffered_audio_s: float = Field(20.0, gt=0)  # audio queued, not yet processed, per session
    # The HTTP flavour (config_http.yaml, whisper_streaming.openai_api): the largest upload
    # (413 beyond) and the most audio one request transcribes (400 beyond).
    max_file_mb: int = Field(512, ge=1)
    max_file_audio_s: float = Field(7200.0, gt=0)

    def model_path(self) -> str:
        return model_dir(self.whisper_model, "whisper_model")
