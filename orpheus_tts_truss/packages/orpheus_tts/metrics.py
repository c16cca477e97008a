"""Session-level Prometheus metrics of the TTS truss (served by the Truss server on /metrics).

Engine-level metrics (tokens/s, SNAC batches) belong to the runtime modules.
"""

from __future__ import annotations

from speech_common import metrics

# Seconds; first audio on an H100 is ~0.1-0.3 s, CPU dummy runs are slower.
_LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)

ACTIVE_SESSIONS = metrics.gauge("orpheus_active_sessions", "Open TTS WebSocket sessions.")
SESSIONS = metrics.counter(
    "orpheus_sessions_total",
    "Finished TTS sessions by outcome (ok, client_gone, protocol_error, engine_error, internal_error, overloaded, cancelled).",
    labelnames=["outcome"],
)
ACTIVE_GENERATIONS = metrics.gauge(
    "orpheus_active_generations", "Generations (one text chunk each) running in the engine."
)
GENERATIONS = metrics.counter(
    "orpheus_generations_total", "Generations started (one per text chunk)."
)
ABORTED_GENERATIONS = metrics.counter(
    "orpheus_aborted_generations_total",
    "Generations cancelled before they finished, by reason (client_gone, protocol_error, engine_error, "
    "internal_error).",
    labelnames=["reason"],
)
FAILED_GENERATIONS = metrics.counter(
    "orpheus_failed_generations_total", "Generations that raised inside the engine or decoder."
)
TIME_TO_FIRST_AUDIO = metrics.histogram(
    "orpheus_time_to_first_audio_seconds",
    "Per session: from the last word of the first text chunk to the first audio byte sent.",
    buckets=_LATENCY_BUCKETS_S,
)
GENERATION_FIRST_AUDIO = metrics.histogram(
    "orpheus_generation_first_audio_seconds",
    "Per generation: from its start in the engine to its first PCM chunk.",
    buckets=_LATENCY_BUCKETS_S,
)
AUDIO_BYTES_SENT = metrics.counter(
    "orpheus_audio_bytes_sent_total", "PCM s16le bytes sent to clients (48000 bytes = 1 s)."
)
ABORT_SECONDS = metrics.histogram(
    "orpheus_abort_seconds",
    "From a client disconnect being seen to all of its generations released by the engine.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
