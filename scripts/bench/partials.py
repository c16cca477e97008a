#!/usr/bin/env python
"""Stable partials: how often a word a partial marked stable later changes, and how early the
stable words come.

    python scripts/bench/partials.py                  # starts the local truss (tiny.en on CPU)
    python scripts/bench/partials.py --corpus samples/real --sessions 2 --interval 0.5
    python scripts/bench/partials.py --replay bench_results/partials.json --rules 2:1:-0.4 3:1:-

Streams every ``*.wav`` of ``--corpus`` (default ``samples/real``) through the real server
(``scripts/local/spawn.py``'s serve.py, admission control off; or ``--url``) at real-time pace
with the project's client (``scripts/clients/stt.py``), partials on (``--interval`` s) and
``stable_partials`` on, ``--sessions`` clips at a time. Every partial and final is recorded per
utterance (``transcription_num``).

A marked word *changed* when the utterance's final has another word at its position (compared
normalised, as the rule compares: case and punctuation do not count) or has no word there. The
report gives, for the server's own marks and for other LocalAgreement rules replayed on the same
recorded partials (``--rules n:hold_back:min_log_prob``; the rule is a pure function of the
partials' texts and log-probs, so a replay is exactly what the server would have sent): the
words marked, their share of the finals' words, how many changed (by position, the issue's bar;
and aligned with the final, where one inserted or dropped word counts once), and how long
before its final a marked word was first marked (its lead). The server's finals keep the
words their partials promised (a final that would not is decoded again with them forced), so
a wrong promise costs accuracy instead: the report gives the finals' WER against each clip's reference (``<clip>.json``), to set against the
same clips' finals decoded freely (``scripts/bench/replay.py --files``). Writes JSON (``--out``); ``--replay`` re-scores
written JSONs (pooled) without streaming.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import random
import time
from pathlib import Path

from scripts import REPO_ROOT
from scripts.bench.report import LOCAL_WHISPER, machine
from scripts.bench.stats import percentile
from scripts.bench.stt import START_JITTER_S
from scripts.bench.wer import wer
from scripts.clients.auth import API_KEY_ENV
from scripts.clients.stt import (
    CLIENT_RATE_HZ,
    FRAME_SAMPLES,
    final_text,
    frames_of,
    read_wav,
    stream,
    v1_metadata,
)
from whisper_streaming.stability import (
    AGREEMENT,
    HOLD_BACK_WORDS,
    MIN_LOG_PROB,
    LocalAgreement,
    normalise,
)

DEFAULT_CORPUS = REPO_ROOT / "samples" / "real"
DEFAULT_OUT = REPO_ROOT / "bench_results" / "partials.json"
# n:hold_back[:min_log_prob] ("-": none)
DEFAULT_RULES = (
    "1:1:-",
    "2:1:-",
    "3:1:-",
    "4:1:-",
    "1:1:-0.35",
    "2:0:-0.35",
    "2:2:-0.35",
    "2:1:-0.4",
    "2:1:-0.3",
    "3:1:-0.35",
)
Rule = tuple[int, int, float | None]
SERVER_RULE: Rule = (AGREEMENT, HOLD_BACK_WORDS, MIN_LOG_PROB)
TARGET_CHANGED = 0.01  # the bar: marked words that change, under 1 %


# -- streaming ------------------------------------------------------------------------------------
async def one_clip(url: str, wav: Path, interval_s: float, api_key: str | None) -> dict:
    """Stream one clip; its utterances: each partial (arrival, text, server's stable fields) and
    the final (arrival, text), by transcription_num."""
    metadata = v1_metadata(
        partials=True, partial_transcript_interval_s=interval_s, stable_partials=True
    )
    result = await stream(
        url,
        frames_of(read_wav(wav)),
        metadata,
        frame_s=FRAME_SAMPLES / CLIENT_RATE_HZ,
        api_key=api_key,
        timeout_s=300,
    )
    utterances: dict[int, dict] = {}
    for t, msg in result.arrivals:
        if msg.get("type") != "transcription":
            continue
        u = utterances.setdefault(msg["transcription_num"], {"partials": [], "final": None})
        if msg["is_final"]:
            u["final"] = {"t": round(t, 3), "text": final_text(msg)}
        else:
            u["partials"].append(
                {
                    "t": round(t, 3),
                    "audio_s": msg["audio_length_sec"],
                    "log_probs": [seg["log_prob"] for seg in msg["segments"]],
                    "text": msg["transcript"],
                    "stable_text": msg.get("stable_text"),
                    "stable_word_count": msg.get("stable_word_count"),
                }
            )
    reference = wav.with_suffix(".json")
    return {
        "clip": wav.stem,
        "reference": json.loads(reference.read_text())["text"] if reference.exists() else None,
        "finished": result.finished,
        "errors": [m.get("body", m) for m in result.errors],
        "close_code": result.close_code,
        "utterances": [utterances[n] | {"num": n} for n in sorted(utterances)],
    }


async def stream_corpus(
    url: str, wavs: list[Path], sessions: int, interval_s: float, api_key: str | None
) -> list[dict]:
    slots = asyncio.Semaphore(sessions)
    rng = random.Random(sessions)

    async def one(wav: Path) -> dict:
        async with slots:
            await asyncio.sleep(rng.uniform(0, START_JITTER_S))
            return await one_clip(url, wav, interval_s, api_key)

    return await asyncio.gather(*[one(wav) for wav in wavs])


# -- scoring --------------------------------------------------------------------------------------
def log_prob(partial: dict) -> float | None:
    """What the core gives the rule: the partial's least sure segment's average log-prob."""
    probs = [p for p in partial.get("log_probs") or [] if p is not None]
    return min(probs) if probs else None


def marks(partials: list[dict], rule: Rule | None) -> list[tuple[float, str]]:
    """Each stable word of an utterance, in order: (when first marked, the word as marked).
    ``rule`` None: the server's own marks (its frames' stable fields); else (n, hold_back,
    min_log_prob) replayed on the partials' texts and log-probs."""
    agreement = None if rule is None else LocalAgreement(*rule)
    out: list[tuple[float, str]] = []
    for p in partials:
        if agreement is None:
            words = (p["stable_text"] or "").split()
            assert len(words) == (p["stable_word_count"] or 0), p
        else:
            words = list(agreement.update(p["text"], log_prob(p)))
        for word in words[len(out) :]:
            out.append((p["t"], word))
    return out


def unaligned(marked: list[str], final: list[str]) -> int:
    """Marked words that an alignment with the final's words (normalised) leaves unmatched: an
    inserted or dropped word counts once here, where by position every word after it changed."""
    matcher = difflib.SequenceMatcher(None, marked, final, autojunk=False)
    return len(marked) - sum(block.size for block in matcher.get_matching_blocks())


def score(clips: list[dict], rule: Rule | None) -> dict:
    marked = changed = final_words = aligned_changed = 0
    leads: list[float] = []
    changes: list[dict] = []
    respelled = 0  # a promised word whose normalised form changed between partials (server only)
    for clip in clips:
        for u in clip["utterances"]:
            final = u["final"]
            words = [normalise(w) for w in final["text"].split()] if final else []
            final_words += len(words)
            stable = marks(u["partials"], rule)
            if rule is None:
                first = [normalise(w) for _, w in stable]
                for p in u["partials"]:
                    now = [normalise(w) for w in (p["stable_text"] or "").split()]
                    respelled += sum(a != b for a, b in zip(first, now, strict=False))
            aligned_changed += unaligned([normalise(w) for _, w in stable], words)
            for k, (t, word) in enumerate(stable):
                marked += 1
                if final is not None:
                    leads.append(final["t"] - t)
                if k >= len(words) or words[k] != normalise(word):
                    changed += 1
                    changes.append(
                        {
                            "clip": clip["clip"],
                            "num": u["num"],
                            "position": k,
                            "marked": word,
                            "final": words[k] if k < len(words) else None,
                            "final_text": final["text"] if final else None,
                        }
                    )
    return {
        "rule": "server" if rule is None else rule_name(rule),
        "marked_words": marked,
        "final_words": final_words,
        "marked_share": marked / final_words if final_words else None,
        "changed_words": changed,
        "changed_share": changed / marked if marked else None,
        "changed_aligned_words": aligned_changed,
        "lead_p50_s": percentile(leads, 50),
        "lead_p10_s": percentile(leads, 10),
        "lead_p90_s": percentile(leads, 90),
        "changes": changes,
        **({"respelled_promises": respelled} if rule is None else {}),
    }


def parse_rule(text: str) -> Rule:
    n, hold, *rest = text.split(":")
    floor = None if not rest or rest[0] in ("", "-") else float(rest[0])
    return int(n), int(hold), floor


def rule_name(rule: Rule) -> str:
    n, hold, floor = rule
    return f"{n}:{hold}:{'-' if floor is None else f'{floor:g}'}"


def table(rows: list[dict], server_rule: str) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v * 100:.2f} %"

    def sec(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f} s"

    lines = [
        "| rule (n:hold_back:min_log_prob) | words marked | of the finals' words | marked words changed | "
        "changed | aligned: changed | lead p10 / p50 / p90 (first marked -> its final) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["rule"] if r["rule"] != "server" else f"server's frames ({server_rule})"
        lines.append(
            f"| {name} | {r['marked_words']} | {pct(r['marked_share'])} | {r['changed_words']} | "
            f"{pct(r['changed_share'])} | {r['changed_aligned_words']} | "
            f"{sec(r['lead_p10_s'])} / {sec(r['lead_p50_s'])} / "
            f"{sec(r['lead_p90_s'])} |"
        )
    return "\n".join(lines)


def report(
    clips: list[dict], rules: list[Rule], server_rule: Rule = SERVER_RULE
) -> tuple[list[dict], str]:
    """The table and the details; ``server_rule``: the rule the server ran (checked by replay)."""
    utterances = [u for c in clips for u in c["utterances"]]
    replayed = all(
        marks(u["partials"], None) == marks(u["partials"], server_rule) for u in utterances
    )
    server = score(clips, None)
    name = rule_name(server_rule)
    rows = [server] + [score(clips, rule) for rule in rules]
    partials = sum(len(u["partials"]) for u in utterances)
    finals = sum(u["final"] is not None for u in utterances)
    lines = [
        table(rows, name),
        "",
        f"{len(clips)} clips, {len(utterances)} utterances ({finals} with a final), "
        f"{partials} partials",
        f"replaying {name} on the recorded partials gives the server's marks: "
        f"{'yes' if replayed else 'NO'}",
        f"promised words whose normalised form changed between partials: "
        f"{server['respelled_promises']}",
    ]
    ok = server["changed_share"] is not None and server["changed_share"] < TARGET_CHANGED
    lines.append(
        f"server's marked words changed: {server['changed_words']} of {server['marked_words']} "
        f"({table_pct(server['changed_share'])}; bar < {TARGET_CHANGED:.0%}: "
        f"{'met' if ok else 'NOT met'}); aligned with the final: "
        f"{server['changed_aligned_words']}"
    )
    for change in server["changes"]:
        lines.append(
            f"  {change['clip']} #{change['num']} word {change['position']}: marked "
            f"{change['marked']!r}, final {change['final']!r} ({change['final_text']!r})"
        )
    scored = [c for c in clips if c.get("reference")]
    if scored:
        finals = [
            " ".join(u["final"]["text"] for u in c["utterances"] if u["final"]) for c in scored
        ]
        lines.append(
            f"finals' WER: {wer([c['reference'] for c in scored], finals) * 100:.1f} % "
            f"({len(scored)} clips; each final keeps its promised words)"
        )
    bad = [c for c in clips if not c["finished"] or c["errors"] or c["close_code"] != 1000]
    for c in bad:
        lines.append(
            f"  {c['clip']}: finished={c['finished']} close {c['close_code']} errors {c['errors']}"
        )
    return rows, "\n".join(lines)


def table_pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="websocket URL; default: start the local whisper truss")
    parser.add_argument(
        "--corpus", type=Path, default=DEFAULT_CORPUS, help="stream every WAV of this folder"
    )
    parser.add_argument("--sessions", type=int, default=2, help="clips streamed at a time")
    parser.add_argument("--interval", type=float, default=0.5, help="partial_transcript_interval_s")
    parser.add_argument(
        "--rules",
        nargs="+",
        default=list(DEFAULT_RULES),
        help="LocalAgreement rules (n:hold_back:min_log_prob, '-': no floor) "
        "replayed on the same partials",
    )
    parser.add_argument(
        "--replay", type=Path, nargs="+", help="score these JSONs (previous --out), pooled"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV))
    args = parser.parse_args()
    rules = [parse_rule(r) for r in args.rules]

    if args.replay:
        recorded = [json.loads(path.read_text()) for path in args.replay]
        server_rules = {r["server_rule"] for r in recorded}
        if len(server_rules) > 1:
            raise SystemExit(f"the files' servers ran different rules: {sorted(server_rules)}")
        clips = [clip for r in recorded for clip in r["clips"]]
        _, text = report(clips, rules, parse_rule(server_rules.pop()))
        print(text)
        return

    wavs = sorted(args.corpus.glob("*.wav"))
    if not wavs:
        raise SystemExit(f"no *.wav in {args.corpus}")
    t0 = time.monotonic()
    if args.url:
        clips = asyncio.run(
            stream_corpus(args.url, wavs, args.sessions, args.interval, args.api_key)
        )
    else:
        from scripts.local.spawn import ADMISSION_OFF, serve_truss

        with serve_truss("whisper_streaming_truss", env=ADMISSION_OFF) as server:
            clips = asyncio.run(
                stream_corpus(server.ws_url, wavs, args.sessions, args.interval, args.api_key)
            )
    rows, text = report(clips, rules)
    out = {
        "machine": machine(),
        "url": args.url or LOCAL_WHISPER,
        "corpus": str(args.corpus),
        "sessions": args.sessions,
        "partial_interval_s": args.interval,
        "wall_s": round(time.monotonic() - t0, 1),
        "server_rule": rule_name(SERVER_RULE),
        "rules": rows,
        "clips": clips,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(text)
    print(f"wall {out['wall_s']} s, load average at the end {out['machine']['load_avg_at_end']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
