#!/usr/bin/env python
"""Finals of WAV streams without a server: the session core (``SttCore`` behind Baseten's codec
rules), Silero and Whisper in this process, jobs run as soon as they are asked for, as fast as the
CPU goes (a 90 s stream in ~15 s on one core, tiny.en).

    python scripts/bench/replay.py --conversation            # the conversational set + its clips
    PAUSE_PREROLL_MS=0 python scripts/bench/replay.py --conversation --out /tmp/off.json
    python scripts/bench/replay.py --files samples/real/*.wav

For what-ifs on segmentation and decoding settings (any ``WhisperSettings`` key as an
environment variable, as ``scripts/local/serve.py`` takes them; the CPU stand-in's overrides
apply): finals depend on the audio, the VAD and the settings, not on timing, so they are the
finals a server gives with partials off (``tests/test_replay.py`` holds replay and server to
the same text). Latency is not measured here: ``bench-stt`` streams at real time for that.
Writes a report in ``bench-stt``'s shape, so ``conversation.py diagnose`` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from scripts import REPO_ROOT
from scripts.bench import conversation, paired
from scripts.bench.stt import add_session_options, session_options
from scripts.bench.wer import wer
from scripts.clients.stt import CLIENT_RATE_HZ, FRAME_SAMPLES, final_text, read_wav, v1_metadata

WHISPER_CONFIG = REPO_ROOT / "whisper_streaming_truss" / "config.yaml"
TRUSS = "whisper_streaming_truss"
FRAME_S = FRAME_SAMPLES / CLIENT_RATE_HZ


def settings():
    """The local server's settings: config.yaml, the CPU stand-in's overrides, the environment."""
    from scripts.local.serve import CPU_DEFAULTS
    from whisper_streaming.settings import WhisperSettings

    metadata = yaml.safe_load(WHISPER_CONFIG.read_text())["model_metadata"]
    environ = {**CPU_DEFAULTS[TRUSS], **os.environ}
    return WhisperSettings.from_metadata(metadata, environ)


class Replayer:
    """One process's models; ``finals(path)`` streams a WAV through a fresh session core."""

    def __init__(self) -> None:
        from faster_whisper import WhisperModel

        from scripts.local.serve import embedded_whisper_dir
        from speech_common.turn import SmartTurn
        from speech_common.vad import SileroVad
        from whisper_streaming.engine import WhisperEngine

        self.settings = s = settings()
        path = embedded_whisper_dir() if s.whisper_model.startswith("embedded:") else s.model_path()
        model = WhisperModel(
            path,
            device="cpu",
            compute_type=s.whisper_compute_type,
            cpu_threads=s.whisper_cpu_threads,
        )
        self.engine = WhisperEngine(model, encoder_context_s=s.whisper_encoder_context_s)
        self.vad = SileroVad()
        self.turn = SmartTurn()

    def finals(self, path: Path, metadata: dict) -> list[dict]:
        """Each final as Baseten's protocol sends it (the published ``transcription`` message)."""
        return [m for m in self.messages(path, metadata) if m.get("type") == "transcription"]

    def messages(self, path: Path, metadata: dict) -> list[dict]:
        """What a client of Baseten's protocol hears: the finals and ``end_of_turn`` messages,
        each with ``t``, the audio position when it went out (stream seconds; the models take
        no time here)."""
        from speech_common.driver import Send, Submit
        from whisper_streaming.codec_session import CodecSession
        from whisper_streaming.session import core_limits

        session = CodecSession.baseten(core_limits(self.settings), self.engine.supported_languages)
        heard: list[dict] = []
        now = 0.0

        def drain(commands: list) -> None:
            queue = list(commands)
            while queue:
                command = queue.pop(0)
                if isinstance(command, Submit):
                    queue.extend(session.on_result(command.job_id, self._run(command), now))
                elif isinstance(command, Send) and isinstance(command.message, dict):
                    kind = command.message.get("type")
                    final = kind == "transcription" and command.message["is_final"]
                    if final or kind == "end_of_turn":
                        heard.append({**command.message, "t": round(now, 3)})
                # Cancel: jobs run at once, nothing is ever outstanding; Close: the end.

        drain(session.start(now) + session.on_text(json.dumps(metadata), now))
        pcm = read_wav(path).tobytes()
        frame_bytes = FRAME_SAMPLES * 2
        for i in range(0, len(pcm), frame_bytes):
            now = i / 2 / CLIENT_RATE_HZ
            drain(session.on_bytes(pcm[i : i + frame_bytes], now))
        drain(session.on_text(json.dumps({"type": "end_audio"}), now))
        return heard

    def _run(self, command) -> object:
        from whisper_streaming.protocol import TURN_WORKER, VAD_WORKER

        if command.worker == VAD_WORKER:
            return self.vad.step([command.payload])[0]
        if command.worker == TURN_WORKER:
            return float(self.turn.probabilities([command.payload])[0])
        return self.engine.run([command.payload])[0]


_REPLAYER: Replayer | None = None


def _replay_one(args: tuple[str, dict]) -> tuple[str, list[dict], float]:
    global _REPLAYER
    if _REPLAYER is None:
        _REPLAYER = Replayer()
    path, metadata = args
    t0 = time.monotonic()
    finals = _REPLAYER.messages(Path(path), metadata)
    return path, finals, time.monotonic() - t0


def replay(paths: list[Path], metadata: dict, workers: int) -> dict[str, list[dict]]:
    """Each WAV's finals, ``workers`` processes at a time (one Whisper thread each)."""
    jobs = [(str(p), metadata) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_replay_one, jobs))
    return {Path(p).stem: finals for p, finals, _ in results}


def level(messages: dict[str, list[dict]], refs: dict[str, str]) -> dict:
    """A ``bench-stt`` report row (sessions 1) from each file's finals and turn ends."""
    finals = {n: [m for m in ms if m["type"] == "transcription"] for n, ms in messages.items()}
    turns = {n: [m for m in ms if m["type"] == "end_of_turn"] for n, ms in messages.items()}
    transcripts = {n: " ".join(final_text(f) for f in fs).strip() for n, fs in finals.items()}
    return {
        "sessions": 1,
        "wer_vs_reference": wer([refs[n] for n in finals], [transcripts[n] for n in finals]),
        "transcripts": transcripts,
        "finals_detail": {
            n: [
                {
                    "start_s": f["segments"][0]["start_time"] if f["segments"] else None,
                    "end_s": f["segments"][-1]["end_time"] if f["segments"] else None,
                    "text": final_text(f),
                }
                for f in fs
            ]
            for n, fs in finals.items()
        },
        "turns_detail": turns,
    }


def _refs(paths: list[Path]) -> dict[str, str]:
    return {p.stem: json.loads(p.with_suffix(".json").read_text())["text"] for p in paths}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=Path, nargs="+", help="WAVs (reference in <name>.json)")
    parser.add_argument(
        "--conversation",
        action="store_true",
        help="build the conversational set, replay its streams and then its clips one by one",
    )
    parser.add_argument("--conversation-dir", type=Path, default=conversation.DEFAULT_OUT)
    parser.add_argument("--no-pauses", action="store_true", help="--conversation's --no-pauses")
    parser.add_argument(
        "--hesitations", action="store_true", help="--conversation: pauses after a function word"
    )
    parser.add_argument("--no-one-clip", action="store_true", help="skip the clips one by one")
    parser.add_argument("--sources", type=Path, nargs="+", default=list(conversation.SOURCES))
    add_session_options(parser)
    parser.add_argument(
        "--offline-from",
        type=Path,
        help="a bench-stt report whose offline transcripts to carry over (for diagnose)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench_results" / "replay.json")
    args = parser.parse_args()
    metadata = v1_metadata(partials=False, **session_options(args))
    clips: list[Path] = []
    if args.conversation:
        streams = conversation.build(
            args.conversation_dir, conversation.STREAMS, conversation.SEED,
            tuple(args.sources), not args.no_pauses, args.hesitations,
        )  # fmt: skip
        if not args.no_one_clip:
            clips = [p for folder in args.sources for p in sorted(folder.glob("*.wav"))]
    elif args.files:
        streams = list(args.files)
    else:
        parser.error("give --files or --conversation")
    t0 = time.monotonic()
    refs = _refs(streams + clips)
    rows = [level(replay(streams, metadata, args.workers), refs)]
    one_clip = [level(replay(clips, metadata, args.workers), refs)] if clips else []
    offline = {}
    if args.offline_from:
        offline = json.loads(args.offline_from.read_text()).get("offline_transcripts") or {}
    report = {
        "replay": True,
        "settings": settings().model_dump(),
        "files": [p.stem for p in streams],
        "corpus": str(streams[0].parent),
        "offline_transcripts": offline,
        "levels": rows,
        "one_clip_files": [p.stem for p in clips],
        "one_clip_levels": one_clip,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"streams: WER {rows[0]['wer_vs_reference']:.2%}")
    if one_clip:
        print(f"clips one per socket: WER {one_clip[0]['wer_vs_reference']:.2%}")
    if offline:
        named = [n for n in report["files"] if n in offline]
        if named:
            print(f"offline: WER {wer([refs[n] for n in named], [offline[n] for n in named]):.2%}")
        clip_by_clip = paired.one_clip_vs_offline(report)
        if clip_by_clip is not None:
            paired.print_paired(clip_by_clip, "one clip per socket", "offline")
    if args.conversation:
        conversation.print_diagnosis(conversation.diagnose(report))
    if args.conversation and args.end_of_turn:
        conversation.print_turns(conversation.score_turns(report))
    print(f"wrote {args.out} in {report['wall_s']} s")


if __name__ == "__main__":
    main()
