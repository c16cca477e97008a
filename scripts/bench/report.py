"""What a benchmark's JSON report says about where it ran."""

from __future__ import annotations

import os
import platform

LOCAL_WHISPER = "local whisper_streaming_truss (scripts/local/serve.py defaults)"


def machine() -> dict:
    """The platform, its CPU count and the load average as the run ends (other work on the
    machine moves latency figures)."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
    }
