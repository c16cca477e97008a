"""Prometheus metrics of the streaming Whisper server (exposed on the Truss server's /metrics)."""

from speech_common import metrics

ACTIVE_SESSIONS = metrics.gauge("whisper_active_sessions", "Open streaming transcription sessions")
QUEUE_DEPTH = metrics.gauge("whisper_queue_depth", "Transcription jobs waiting for the model")
FINAL_LATENCY = metrics.histogram(
    "whisper_final_latency_seconds",
    "Arrival of the last speech audio of an utterance -> its final transcript sent",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
AUDIO_SECONDS = metrics.counter("whisper_audio_seconds", "Seconds of client audio processed")
PARTIALS_SENT = metrics.counter("whisper_partials_sent", "Partial transcripts sent")
FINALS_SENT = metrics.counter("whisper_finals_sent", "Final transcripts sent")
SESSION_ERRORS = metrics.counter(
    "whisper_session_errors", "Sessions ended by an error", labelnames=("error_type",)
)
SESSIONS_REFUSED = metrics.counter(
    "whisper_sessions_refused", "Sessions refused with 1013 (session cap or admission control)"
)
PARTIALS_SHED = metrics.counter(
    "whisper_partials_shed", "Partial transcripts not computed because finals were queued"
)
# The HTTP flavour (config_http.yaml, whisper_streaming.openai_api).
FILE_REQUESTS = metrics.counter(
    "whisper_file_requests",
    "HTTP transcription requests by outcome (ok, refused: 4xx, failed: 5xx, client_gone)",
    labelnames=("outcome",),
)
FILE_AUDIO_SECONDS = metrics.counter(
    "whisper_file_audio_seconds", "Seconds of uploaded audio transcribed over HTTP"
)
FILE_TRANSCRIPTIONS_ACTIVE = metrics.gauge(
    "whisper_file_transcriptions_active", "Uploaded files being transcribed (HTTP)"
)
