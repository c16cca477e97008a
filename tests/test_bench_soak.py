"""scripts/bench/soak.py without a server: its reading of /metrics (prometheus_client's parser,
over httpx, following the Truss server's redirect to /metrics/) and its table of the trusses."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from scripts.bench import soak

METRICS = """\
# HELP whisper_active_sessions Open sessions.
# TYPE whisper_active_sessions gauge
whisper_active_sessions 0.0
# HELP orpheus_active_generations Generations in flight.
# TYPE orpheus_active_generations gauge
orpheus_active_generations{voice="tara"} 2.0
orpheus_active_generations{voice="leo"} 1.0
# HELP orpheus_sessions_total Finished sessions by outcome.
# TYPE orpheus_sessions_total counter
orpheus_sessions_total{outcome="ok"} 7.0
orpheus_sessions_created{outcome="ok"} 1.7e+09
# HELP whisper_final_latency_seconds Speech end -> final.
# TYPE whisper_final_latency_seconds histogram
whisper_final_latency_seconds_bucket{le="0.25"} 1.0
whisper_final_latency_seconds_bucket{le="1.0"} 4.0
whisper_final_latency_seconds_bucket{le="0.5"} 3.0
whisper_final_latency_seconds_bucket{le="+Inf"} 4.0
whisper_final_latency_seconds_count 4.0
whisper_final_latency_seconds_sum 1.5
"""


def test_gauges_are_summed_over_their_labels_and_absent_ones_left_out() -> None:
    samples = soak.parse_metrics(METRICS)
    names = ("whisper_active_sessions", "orpheus_active_generations", "orpheus_active_sessions")
    assert soak.gauge_values(samples, names) == {
        "whisper_active_sessions": 0.0,
        "orpheus_active_generations": 3.0,
    }
    # A counter's sample keeps its _total name (the family's name drops it).
    assert soak.gauge_values(samples, ["orpheus_sessions_total"]) == {"orpheus_sessions_total": 7}


def test_histogram_buckets_in_order_and_the_p95_bound_between_two_reads() -> None:
    samples = soak.parse_metrics(METRICS)
    after = soak.histogram_buckets(samples, "whisper_final_latency_seconds")
    assert after == [(0.25, 1.0), (0.5, 3.0), (1.0, 4.0), (float("inf"), 4.0)]
    before = [(le, 0.0) for le, _ in after]
    assert soak.histogram_p95(before, after) == 1.0
    assert soak.histogram_p95(after, after) is None  # nothing observed in between
    assert soak.histogram_buckets(samples, "orpheus_time_to_first_audio_seconds") == []


@contextmanager
def metrics_server(text: str) -> Iterator[str]:
    """/metrics redirects to /metrics/ (as the Truss server does), which serves ``text``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self.send_response(307)
                self.send_header("Location", "/metrics/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


async def test_settle_reads_the_gauges_over_http() -> None:
    with metrics_server(METRICS) as http:
        whisper = soak.PhaseResult("x")
        await soak.settle(http, soak.TRUSSES["whisper"], whisper)
        orpheus = soak.PhaseResult("x")
        await soak.settle(http, soak.TRUSSES["orpheus"], orpheus)
    assert whisper.gauges_zero_within_1s and whisper.gauges_after == {"whisper_active_sessions": 0}
    assert not orpheus.gauges_zero_within_1s
    assert orpheus.gauges_after == {"orpheus_active_generations": 3.0}


@pytest.mark.parametrize("kind", sorted(soak.TRUSSES))
def test_each_truss_has_a_valid_first_frame_and_fuzzes_its_own_content(kind: str) -> None:
    truss = soak.TRUSSES[kind]
    assert isinstance(json.loads(truss.first_frame), dict)
    content = truss.content()
    rng = random.Random(0)
    frames = [soak.fuzz_frame(rng, truss, content) for _ in range(300)]
    unit = type(content[0])
    assert any(isinstance(f, unit) and f and f != truss.first_frame for f in frames)
    assert truss.first_frame in frames
