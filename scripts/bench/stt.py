#!/usr/bin/env python
"""Streaming-Whisper benchmark: N concurrent real-time sessions against a local or remote server.

    python scripts/bench/stt.py                       # starts the local truss (tiny.en on CPU)
    python scripts/bench/stt.py --sessions 1 2 4 8 --capacity
    python scripts/bench/stt.py --url wss://…/environments/production/websocket   # BASETEN_API_KEY

``--corpus DIR`` streams every ``*.wav`` of DIR (16 kHz mono s16le, reference text in
``<name>.json``), e.g. the real-speech set in ``samples/real``.

``--conversation`` builds the conversational set (``scripts/bench/conversation.py``: the real
clips of samples/real and samples/real_speakers joined into long streams with gaps and pauses
inside sentences, one socket per stream, as a voice agent's call) and streams it, then the same
clips one socket per clip, at each level; then it classifies the conversation's errors by where
they fall in the streams' timelines.

Reports per N: p50/p95 end-of-speech -> final latency (end of speech = last non-silent sample of
each utterance in the WAV, mapped to wall time by the real-time pacing), time to first partial,
WER of the streamed finals against the reference text and against an offline faster-whisper
transcription of the same files (Whisper's English normaliser + jiwer); with ``--capacity`` the
largest N whose p95 final latency stays under 1 s. Writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

from scripts import REPO_ROOT
from scripts.bench import conversation, paired
from scripts.bench.report import LOCAL_WHISPER, machine
from scripts.bench.stats import percentile
from scripts.bench.wer import repeated_phrases, wer
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.stt import CLIENT_RATE_HZ as RATE
from scripts.clients.stt import FRAME_SAMPLES, final_text, frames_of, read_wav, stream, v1_metadata
from speech_common.ws import CloseCode

TRY_AGAIN_LATER = CloseCode.TRY_AGAIN_LATER

SAMPLES = REPO_ROOT / "samples"
DEFAULT_FILES = ("speech_en", "weather_en", "order_en")
SILENCE_LEVEL = 64  # int16 amplitude below which a sample is silence (espeak pads with zeros)
MERGE_GAP_S = 0.5  # gaps shorter than this are inside one utterance
CAPACITY_P95_S = 1.0
START_JITTER_S = 1.0  # sessions start spread over this window, not in lockstep


@dataclass
class SessionStats:
    file: str
    final_latencies_s: list[float]
    first_partial_s: float | None
    transcript: str
    finished: bool
    errors: int
    finals: list[str]  # each final's text
    refused: bool = False  # answered 1013 (admission control) at the handshake
    # What went wrong, traceably: each error frame's body (error_type, message, ...) and how
    # the server closed the socket.
    error_frames: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    # Each final: arrival (s since the first frame), its audio's start and end in the stream
    # (first and last segment), its text.
    final_spans: list[dict] = field(default_factory=list)
    # Each end_of_turn message (with --end-of-turn): arrival, the turn's last speech, why.
    turns: list[dict] = field(default_factory=list)

    def outcome(self) -> dict:
        """This session's ending, for the JSON report."""
        return {
            "file": self.file,
            "refused": self.refused,
            "finished": self.finished,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "errors": [frame.get("body", frame) for frame in self.error_frames],
        }


def speech_regions(samples: np.ndarray) -> list[tuple[float, float]]:
    """(start_s, end_s) of each utterance: non-silent runs merged across short gaps."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > SILENCE_LEVEL)
    if not len(loud):
        return []
    regions = []
    start = prev = loud[0]
    for i in loud[1:]:
        if i - prev > MERGE_GAP_S * RATE:
            regions.append((start / RATE, prev / RATE))
            start = i
        prev = i
    regions.append((start / RATE, prev / RATE))
    return regions


def match_latencies(
    finals: list[tuple[float, dict]], regions: list[tuple[float, float]]
) -> list[float]:
    """Latency of each utterance's final: arrival minus the region's end of speech."""
    out = []
    for arrival, msg in finals:
        if not msg["segments"]:
            continue
        seg_end = msg["segments"][-1]["end_time"]
        start, end = min(regions, key=lambda r: abs(r[1] - seg_end))
        out.append(arrival - end)
    return out


WHISPER_METADATA: dict = {}  # extra streaming_whisper_params (--beam, --condition)
PATHS: dict[str, Path] = {}  # a file's WAV where it is not SAMPLES/<name>.wav


def wav_path(name: str) -> Path:
    return PATHS.get(name, SAMPLES / f"{name}.wav")


def utterance_regions(name: str, samples: np.ndarray) -> list[tuple[float, float]]:
    """Where the utterances' speech is: a conversational stream's timeline says it (its gaps
    hold noise louder than SILENCE_LEVEL); for a clip, its non-silent runs."""
    meta_path = wav_path(name).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "segments" in meta:
        return conversation.speech_regions(meta)
    return speech_regions(samples)


async def one_session(url: str, name: str, api_key: str | None, delay_s: float) -> SessionStats:
    try:
        return await _one_session(url, name, api_key, delay_s)
    except websockets.ConnectionClosed as exc:
        # The refusal closed the socket before the metadata frame went out.
        if exc.rcvd is None or exc.rcvd.code != TRY_AGAIN_LATER:
            raise
        return SessionStats(
            name,
            [],
            None,
            "",
            False,
            0,
            [],
            refused=True,
            close_code=exc.rcvd.code,
            close_reason=exc.rcvd.reason,
        )


async def _one_session(url: str, name: str, api_key: str | None, delay_s: float) -> SessionStats:
    await asyncio.sleep(delay_s)
    samples = read_wav(wav_path(name))
    regions = utterance_regions(name, samples)
    result = await stream(
        url,
        frames_of(samples),
        v1_metadata(**WHISPER_METADATA),
        frame_s=FRAME_SAMPLES / RATE,
        api_key=api_key,
        timeout_s=300,
    )
    finals = [
        (t, m) for t, m in result.arrivals if m.get("type") == "transcription" and m["is_final"]
    ]
    if result.refused:  # the metadata went out before the refusal came in
        return SessionStats(
            name,
            [],
            None,
            "",
            False,
            0,
            [],
            refused=True,
            error_frames=result.errors,
            close_code=result.close_code,
            close_reason=result.close_reason,
        )
    first_partial = None
    if result.first_partial_s is not None and regions:
        first_partial = result.first_partial_s - regions[0][0]
    return SessionStats(
        name,
        match_latencies(finals, regions),
        first_partial,
        result.transcript,
        result.finished,
        len(result.errors),
        [m["transcript"] for _, m in finals],
        error_frames=result.errors,
        close_code=result.close_code,
        close_reason=result.close_reason,
        final_spans=[
            {
                "t": round(t, 3),
                "start_s": m["segments"][0]["start_time"] if m["segments"] else None,
                "end_s": m["segments"][-1]["end_time"] if m["segments"] else None,
                "text": final_text(m),
            }
            for t, m in finals
        ],
        turns=[
            {"t": round(t, 3), **{k: v for k, v in m.items() if k != "type"}}
            for t, m in result.arrivals
            if m.get("type") == "end_of_turn"
        ],
    )


def pct(values: list[float], q: float) -> float | None:
    """The benchmarks' one percentile definition (scripts.bench.stats: nearest rank)."""
    return percentile(values, q)


def offline_transcripts(files: list[str]) -> dict[str, str]:
    """The same files transcribed in one go by faster-whisper (tiny.en, CPU; its default
    decoding: beam 5, temperature fallback, conditioned on previous text)."""
    from faster_whisper import WhisperModel

    from scripts.local.serve import embedded_whisper_dir

    model = WhisperModel(embedded_whisper_dir(), device="cpu", compute_type="int8")
    out = {}
    for name in files:
        audio = read_wav(wav_path(name)).astype(np.float32) / 32768.0
        segments, _ = model.transcribe(audio, language="en")
        out[name] = " ".join(s.text.strip() for s in segments)
    return out


async def run_level(
    url: str, n: int, files: list[str], api_key: str | None, every_file: bool = False
) -> list[SessionStats]:
    """N concurrent sessions over the files; ``every_file``: stream each file once, N at a time
    (a corpus: its WER covers all of it at every level)."""
    rng = random.Random(n)
    if every_file:
        slots = asyncio.Semaphore(n)

        async def one(name: str) -> SessionStats:
            async with slots:
                return await one_session(url, name, api_key, rng.uniform(0, START_JITTER_S))

        return await asyncio.gather(*[one(name) for name in files])
    return await asyncio.gather(
        *[
            one_session(url, files[i % len(files)], api_key, rng.uniform(0, START_JITTER_S))
            for i in range(n)
        ]
    )


def summarise(
    n: int, stats: list[SessionStats], refs: dict[str, str], offline: dict[str, str] | None
) -> dict:
    all_stats = stats
    refused = sum(s.refused for s in stats)
    stats = [s for s in stats if not s.refused]  # what admitted sessions got
    lat = [x for s in stats for x in s.final_latencies_s]
    first = [s.first_partial_s for s in stats if s.first_partial_s is not None]
    row = {
        "sessions": n,
        "refused": refused,
        "finals": len(lat),
        "final_latency_p50_s": pct(lat, 50),
        "final_latency_p95_s": pct(lat, 95),
        "first_partial_p50_s": pct(first, 50),
        # None when every session was refused (nothing to score).
        "wer_vs_reference": _wer([refs[s.file] for s in stats], [s.transcript for s in stats]),
        "unfinished_sessions": sum(not s.finished for s in stats),
        "transcripts": {s.file: s.transcript for s in stats},
        "finals_detail": {s.file: s.final_spans for s in stats},
        "turns_detail": {s.file: s.turns for s in stats},
        "errors": sum(s.errors for s in stats),
        # Each admitted session's error frames and close, so a failure can be traced.
        "error_types": _count(
            str(e.get("error_type")) for s in stats for e in s.outcome()["errors"]
        ),
        "close_codes": _count(str(s.close_code) for s in stats),
        "sessions_detail": [s.outcome() for s in all_stats],
        # Finals that hold a phrase of >= 3 words twice where the reference does not.
        "finals_repeating_a_phrase": sum(
            bool(repeated_phrases(text, refs[s.file])) for s in stats for text in s.finals
        ),
    }
    if offline is not None and stats:
        # The offline baseline on exactly the files these sessions streamed (same weights).
        row["offline_wer_vs_reference"] = wer(
            [refs[s.file] for s in stats], [offline[s.file] for s in stats]
        )
        row["wer_vs_offline"] = wer([offline[s.file] for s in stats], [s.transcript for s in stats])
    return row


def _wer(references: list[str], hypotheses: list[str]) -> float | None:
    return wer(references, hypotheses) if references else None


def _count(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def on_time(row: dict) -> bool:
    """Every session admitted and finished, finals' p95 under the capacity bound."""
    p95 = row["final_latency_p95_s"]
    return (
        p95 is not None
        and p95 < CAPACITY_P95_S
        and not row["unfinished_sessions"]
        and not row["refused"]
    )


def table(rows: list[dict], offline_wer: float | None) -> str:
    def f(v, scale=1000.0, unit="ms"):
        if v is None:
            return "–"
        return f"{v * scale:.1f} {unit}" if unit == "%" else f"{v * scale:.0f} {unit}"

    lines = [
        "| sessions | refused (1013) | final p50 | final p95 | first partial p50 | streaming WER | offline WER (same files) | streamed vs offline text | finals repeating a phrase |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        off = (
            "–"
            if "offline_wer_vs_reference" not in r
            else f"{r['offline_wer_vs_reference'] * 100:.1f} %"
        )
        vs_offline = (
            off
            + " | "
            + ("–" if "wer_vs_offline" not in r else f"{r['wer_vs_offline'] * 100:.1f} %")
        )
        lines.append(
            f"| {r['sessions']} | {r['refused']} | {f(r['final_latency_p50_s'])} | "
            f"{f(r['final_latency_p95_s'])} | "
            f"{f(r['first_partial_p50_s'])} | {f(r['wer_vs_reference'], 100, '%')} | "
            f"{vs_offline} | {r['finals_repeating_a_phrase']} |"
        )
    if offline_wer is not None:
        lines.append(
            f"\nOffline faster-whisper (same model, whole files) WER vs reference: {offline_wer * 100:.1f} %"
        )
    return "\n".join(lines)


def failed_sessions(rows: list[dict]) -> list[str]:
    """One line per admitted session that got an error frame or did not close normally."""
    lines = []
    for r in rows:
        for d in r["sessions_detail"]:
            if d["refused"] or (not d["errors"] and d["close_code"] == CloseCode.NORMAL):
                continue
            errors = "; ".join(f"{e.get('error_type')}: {e.get('message')}" for e in d["errors"])
            lines.append(
                f"  N={r['sessions']} {d['file']}: close {d['close_code']} "
                f"{d['close_reason']!r}, finished={d['finished']}, errors [{errors}]"
            )
    return lines


def add_session_options(parser: argparse.ArgumentParser) -> None:
    """The options that set the sessions' metadata (bench-stt's and the replay's)."""
    parser.add_argument("--beam", type=int, help="beam_width in the sessions' metadata")
    parser.add_argument(
        "--condition",
        action="store_true",
        help="condition_on_previous_text in the sessions' metadata",
    )
    parser.add_argument(
        "--end-of-turn",
        action="store_true",
        help="end_of_turn in the sessions' metadata; with --conversation, score the turn ends",
    )
    parser.add_argument("--eot-threshold", type=float, help="end_of_turn_threshold (metadata)")


def session_options(args: argparse.Namespace) -> dict:
    """streaming_whisper_params from ``add_session_options``' options."""
    options: dict = {"beam_width": args.beam} if args.beam else {}
    if args.condition:
        options["condition_on_previous_text"] = True
    if args.end_of_turn:
        options["end_of_turn"] = True
    if args.eot_threshold is not None:
        options["end_of_turn_threshold"] = args.eot_threshold
    return options


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="websocket URL; default: start the local whisper truss")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--capacity",
        action="store_true",
        help=f"after --sessions, keep adding sessions until p95 final latency >= {CAPACITY_P95_S} s",
    )
    parser.add_argument("--files", nargs="+", default=list(DEFAULT_FILES))
    parser.add_argument("--corpus", type=Path, help="stream every WAV of this folder instead")
    parser.add_argument(
        "--conversation",
        action="store_true",
        help="build the conversational set and stream it (one socket per stream), then its "
        "clips one socket per clip (scripts/bench/conversation.py)",
    )
    parser.add_argument(
        "--conversation-dir",
        type=Path,
        default=conversation.DEFAULT_OUT,
        help="where --conversation builds its streams",
    )
    parser.add_argument("--streams", type=int, default=conversation.STREAMS)
    parser.add_argument("--seed", type=int, default=conversation.SEED)
    parser.add_argument(
        "--sources",
        type=Path,
        nargs="+",
        default=list(conversation.SOURCES),
        help="with --conversation: the folders of clips it joins",
    )
    parser.add_argument(
        "--no-pauses",
        action="store_true",
        help="with --conversation: no pause inside a sentence (gaps between clips only)",
    )
    parser.add_argument(
        "--hesitations",
        action="store_true",
        help="with --conversation: pauses after a function word (for --end-of-turn)",
    )
    parser.add_argument(
        "--no-one-clip",
        action="store_true",
        help="with --conversation: skip the one-socket-per-clip run of the same clips",
    )
    add_session_options(parser)
    parser.add_argument("--no-offline", action="store_true", help="skip the offline WER comparison")
    parser.add_argument(
        "--out",
        help="JSON report (default bench_results/stt.json; stt_conversation.json there with "
        "--conversation)",
    )
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    args = parser.parse_args()
    WHISPER_METADATA.update(session_options(args))
    one_clip_files: list[str] = []
    if args.conversation:
        streams = conversation.build(
            args.conversation_dir,
            args.streams,
            args.seed,
            tuple(args.sources),
            not args.no_pauses,
            args.hesitations,
        )
        PATHS.update({p.stem: p for p in streams})
        args.files = [p.stem for p in streams]
        if not args.no_one_clip:
            clips = [p for folder in args.sources for p in sorted(folder.glob("*.wav"))]
            PATHS.update({p.stem: p for p in clips})
            one_clip_files = [p.stem for p in clips]
    elif args.corpus:
        global SAMPLES
        SAMPLES = args.corpus.resolve()
        args.files = sorted(p.stem for p in SAMPLES.glob("*.wav"))
    every_file = args.corpus is not None or args.conversation
    out = Path(
        args.out
        or REPO_ROOT
        / "bench_results"
        / ("stt_conversation.json" if args.conversation else "stt.json")
    )

    all_files = args.files + one_clip_files
    refs = {n: json.loads(wav_path(n).with_suffix(".json").read_text())["text"] for n in all_files}
    offline = None if args.no_offline or args.url else offline_transcripts(all_files)

    def offline_wer_of(files: list[str]) -> float | None:
        if offline is None or not files:
            return None
        return wer([refs[n] for n in files], [offline[n] for n in files])

    def bench(url: str, files: list[str], label: str) -> list[dict]:
        rows: list[dict] = []
        levels = list(args.sessions)
        good, bad = 0, None  # capacity search bounds
        while levels:
            n = levels.pop(0)
            t0 = time.monotonic()
            stats = asyncio.run(run_level(url, n, files, args.api_key, every_file=every_file))
            row = summarise(n, stats, refs, offline)
            row["wall_s"] = round(time.monotonic() - t0, 1)
            row["load_avg"] = os.getloadavg()
            rows.append(row)
            print(json.dumps({"set": label, **row}), flush=True)
            if on_time(row):
                good = max(good, n)
            else:
                bad = n if bad is None else min(bad, n)
            if args.capacity and not levels:
                # Grow by half until p95 crosses the bound, then bisect between the bounds.
                nxt = n + max(1, n // 2) if bad is None else (good + bad) // 2
                if nxt not in (good, bad) and nxt not in [r["sessions"] for r in rows]:
                    levels.append(nxt)
        return rows

    def run_all(url: str) -> tuple[list[dict], list[dict]]:
        first = bench(url, args.files, "conversation" if args.conversation else "files")
        return first, bench(url, one_clip_files, "one clip per socket") if one_clip_files else []

    if args.url:
        rows, one_clip_rows = run_all(args.url)
    else:
        from scripts.local.spawn import ADMISSION_OFF, serve_truss

        # Admission control off: the benchmark looks for the knee itself.
        with serve_truss("whisper_streaming_truss", env=ADMISSION_OFF) as server:
            rows, one_clip_rows = run_all(server.ws_url)

    ok = [r["sessions"] for r in rows if on_time(r)]
    report = {
        "machine": machine(),
        "url": args.url or LOCAL_WHISPER,
        "files": args.files,
        "corpus": str(args.corpus) if args.corpus else None,
        "offline_wer_vs_reference": offline_wer_of(args.files),
        "offline_transcripts": offline,
        "levels": rows,
        "max_sessions_p95_under_1s": max(ok) if ok else None,
    }
    if args.conversation:
        report["conversation"] = {
            "dir": str(args.conversation_dir.resolve()),
            "streams": args.files,
            "seed": args.seed,
            "sources": [str(p) for p in args.sources],
            "in_sentence_pauses": not args.no_pauses,
            "duration_s": {
                n: json.loads(wav_path(n).with_suffix(".json").read_text())["duration_s"]
                for n in args.files
            },
        }
        report["one_clip_files"] = one_clip_files
        report["one_clip_offline_wer_vs_reference"] = offline_wer_of(one_clip_files)
        report["one_clip_levels"] = one_clip_rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    title = "conversation: one socket per stream" if args.conversation else None
    print("\n" + (f"{title}\n" if title else "") + table(rows, report["offline_wer_vs_reference"]))
    if one_clip_rows:
        print("\nthe same clips, one socket per clip")
        print(table(one_clip_rows, report["one_clip_offline_wer_vs_reference"]))
        clip_by_clip = paired.one_clip_vs_offline(report)
        if clip_by_clip is not None:
            paired.print_paired(clip_by_clip, "one clip per socket", "offline")
    failures = failed_sessions(rows + one_clip_rows)
    if failures:
        print("\nadmitted sessions that got an error frame or an abnormal close:")
        print("\n".join(failures))
    if args.conversation:
        conversation.print_diagnosis(conversation.diagnose(report))
    if args.conversation and args.end_of_turn:
        conversation.print_turns(conversation.score_turns(report))
    print(
        f"\nlargest N with p95 final latency < {CAPACITY_P95_S:.0f} s: {report['max_sessions_p95_under_1s']}"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
