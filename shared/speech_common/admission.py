"""Admission control: refuse a new session (1013 + a retry hint) when the replica cannot serve it
in time, instead of letting every session's latency collapse.

The signals:
- **lag**: the oldest urgent job (a final, an audio window, a SNAC window) has waited longer
  than ``max_queue_wait_s``: the replica is behind its clients right now;
- **pace** (TTS): a generation in flight has waited longer than ``max_first_audio_s`` for its
  first audio, or the generations in flight produce audio slower than ``min_speed_x`` times
  real time (``orpheus_tts.pace``);
- **capacity**: ``capacity_sessions`` are open already. A burst of sessions arrives before any
  load shows, so this bound comes from a benchmark of the hardware (config.yaml says which).
A worker's busy share is no signal: Whisper's partials are elastic work that fills any idle
time and is shed first, so a worker 100 % busy says nothing about whether finals are late
(4 real-time streams on a 2-core CPU were refused for it while their finals came 0.45 s (p90)
after the speech).
Pure (time passed in), so the policy is unit-tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ws import CloseCode, ProtocolError


@dataclass(frozen=True)
class AdmissionPolicy:
    capacity_sessions: int  # open sessions one replica serves in time (benchmarked)
    max_queue_wait_s: float = 0.5  # urgent work older than this: refuse new sessions
    max_first_audio_s: float | None = None  # a generation waiting longer for first audio: refuse
    min_speed_x: float | None = None  # generations slower than this x real time: refuse
    retry_after_s: float = 2.0


class Admission:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self.refused = 0

    def check(
        self,
        active: int,
        queue_wait_s: float,
        first_audio_wait_s: float = 0.0,
        speed_x: float | None = None,
    ) -> ProtocolError | None:
        """None to admit one more session, else the 1013 error to send. ``queue_wait_s``: how
        long the oldest urgent job has waited; ``first_audio_wait_s``: the longest wait for first
        audio in flight; ``speed_x``: the generations' audio seconds per wall second (None: none
        running long enough to tell)."""
        policy = self.policy
        if queue_wait_s > policy.max_queue_wait_s:
            reason = f"the model queue is {queue_wait_s:.1f} s behind"
        elif policy.max_first_audio_s is not None and first_audio_wait_s > policy.max_first_audio_s:
            reason = f"a generation has waited {first_audio_wait_s:.1f} s for its first audio"
        elif (
            policy.min_speed_x is not None and speed_x is not None and speed_x < policy.min_speed_x
        ):
            reason = f"speech is generated at {speed_x:.2f}x real time"
        elif active + 1 > policy.capacity_sessions:
            reason = f"{active} sessions use this replica's capacity"
        else:
            return None
        self.refused += 1
        return ProtocolError(
            "overloaded",
            f"replica busy: {reason}; retry later",
            CloseCode.TRY_AGAIN_LATER,
            retry_after_s=policy.retry_after_s,
        )
