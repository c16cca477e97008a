"""Admission control: refuse a new session (1013 + a retry hint) when the replica cannot serve it
in time, instead of letting every session's latency collapse.

Two signals, both from the model worker that bounds the replica (Whisper, SNAC):
- **queue wait**: the oldest urgent job (a final, an audio window) has waited longer than
  ``max_queue_wait_s``: the replica is behind right now;
- **capacity**: each open session costs a share of the worker's time (its utilisation over the
  last ``window_s``, divided by the open sessions, smoothed); a new session is admitted while
  ``open sessions + 1`` of them fit in ``target_utilisation``. Until measured, the capacity is
  ``prior_sessions`` (set from a benchmark of the hardware, see config.yaml).
Pure (time passed in), so the policy is unit-tested without a model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from .ws import CloseCode, ProtocolError


@dataclass(frozen=True)
class AdmissionPolicy:
    prior_sessions: int  # sessions one replica serves in time before anything is measured
    target_utilisation: float = 0.8  # the worker busy at most this share of the time
    max_queue_wait_s: float = 0.5  # urgent work older than this: refuse new sessions
    window_s: float = 10.0  # utilisation measured over this window
    smoothing: float = 0.3  # EWMA weight of a new per-session cost measurement
    min_measured_utilisation: float = 0.05  # below this the per-session cost is noise
    retry_after_s: float = 2.0


class Admission:
    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        # (time, worker busy seconds, open sessions) over the last window
        self._samples: deque[tuple[float, float, int]] = deque()
        self.session_cost: float | None = None  # share of the worker one session takes
        self.refused = 0

    @property
    def capacity(self) -> int:
        if self.session_cost is None or self.session_cost <= 0:
            return self.policy.prior_sessions
        return max(1, math.floor(self.policy.target_utilisation / self.session_cost))

    def observe(self, now: float, busy_s: float, active: int) -> None:
        """Record the worker's cumulative busy time; update the per-session cost."""
        self._samples.append((now, busy_s, active))
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.policy.window_s:
            self._samples.popleft()
        start, busy_start, _ = self._samples[0]
        span = now - start
        # The sessions that made the load: their mean count over the window, not the count now.
        sessions = sum(a for _, _, a in self._samples) / len(self._samples)
        if span < self.policy.window_s / 4 or sessions < 1:
            return
        utilisation = min((busy_s - busy_start) / span, 1.0)
        if utilisation < self.policy.min_measured_utilisation:
            return
        cost = utilisation / sessions
        if self.session_cost is None:
            self.session_cost = cost
        else:
            w = self.policy.smoothing
            self.session_cost = (1 - w) * self.session_cost + w * cost

    def check(
        self, now: float, busy_s: float, active: int, queue_wait_s: float
    ) -> ProtocolError | None:
        """None to admit one more session, else the 1013 error to send."""
        self.observe(now, busy_s, active)
        if queue_wait_s > self.policy.max_queue_wait_s:
            reason = f"the model queue is {queue_wait_s:.1f} s behind"
        elif active + 1 > self.capacity:
            reason = f"{active} sessions already use this replica's capacity ({self.capacity})"
        else:
            return None
        self.refused += 1
        return ProtocolError(
            "overloaded",
            f"replica busy: {reason}; retry later",
            CloseCode.TRY_AGAIN_LATER,
            retry_after_s=self.policy.retry_after_s,
        )
