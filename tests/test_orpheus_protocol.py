"""The TTS protocol core behind Baseten's codec, without sockets, engines or clocks: hypothesis
over arbitrary interleavings of frames, generation chunks and ends (in any order, failed or not),
send acknowledgements, timers and disconnects. Every run must end, cancel or finish every
generation it started, respect the per-session generation bounds, and send audio in text order.
A generation's job id and acks are its handle (opaque here); audio names its index in the
order generations were started. With an FFmpeg format (mp3) the audio goes through encode jobs,
answered at arbitrary points of the interleaving by an identity encoder: one job at a time, the
encoder handed over and back, nothing of it left once the session is over."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orpheus_tts.audio_format import ENCODE_WORKER, EncodeResult
from orpheus_tts.codec_session import CodecSession
from orpheus_tts.dialects.baseten import BasetenCodec
from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
from orpheus_tts.protocol import TtsCore
from orpheus_tts.settings import SessionLimits
from speech_common.driver import (
    Cancel,
    Close,
    Command,
    Discard,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
    Submit,
)

CONFIG = {"voice": "tara", "max_tokens": 2000, "buffer_size": 3}
EVENTS = {**CONFIG, "events": True}
WORDS = "One two. Three four five. Six. Seven eight nine ten eleven.".split()


@dataclass(frozen=True)
class Params:
    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3
    max_tokens: int = 2000


@dataclass
class Harness:
    limits: SessionLimits = field(default_factory=SessionLimits)
    now: float = 0.0
    core: TtsCore = None  # type: ignore[assignment]
    session: CodecSession = None  # type: ignore[assignment]
    started: list[StartStream] = field(default_factory=list)
    live: dict[Any, int] = field(default_factory=dict)  # job handle -> chunks produced so far
    finished: set[Any] = field(default_factory=set)  # generated everything (StreamDone ok)
    unacked: list[Any] = field(default_factory=list)  # acks of sends not yet written
    audio: list[bytes] = field(default_factory=list)
    frames: list[dict] = field(default_factory=list)
    closes: list[Close] = field(default_factory=list)
    log: list[tuple[str, object]] = field(default_factory=list)  # ("audio", job) / ("event", ...)
    discarded: list[tuple[Any, bytes]] = field(default_factory=list)
    flushes: list[object] = field(default_factory=list)  # ids of the flushes sent
    words_available: bool = False  # an aligner on the deployment
    aligns: dict[Any, Submit] = field(default_factory=dict)  # aligner jobs outstanding
    encodes: dict[Any, Submit] = field(default_factory=dict)  # the encode job outstanding
    encoders: set[int] = field(default_factory=set)  # ids of the encoders handed to jobs

    def __post_init__(self) -> None:
        self._queued_audio: list[bytes] = []  # parallel to unacked
        self.core = TtsCore(
            self.limits, VOICES, DEFAULT_VOICE, Params(), lambda t, m: min(m, 300), "s",
            word_timestamps_available=self.words_available,
        )  # fmt: skip
        self.session = CodecSession(self.core, BasetenCodec(self.core))
        self.apply(self.session.start(self.now))

    def number(self, job: Any) -> int:
        """A generation's index in the order they were started."""
        return next(i for i, s in enumerate(self.started) if s.job_id is job)

    def running(self) -> list[Any]:
        """Generations still producing, in the order they were started."""
        return sorted(self.live.keys() - self.finished, key=self.number)

    def apply(self, commands: list[Command]) -> None:
        for command in commands:
            assert not self.closes, f"{command} after the close"
            if isinstance(command, StartStream):
                self.started.append(command)
                self.log.append(("start", command.job_id))
                self.live[command.job_id] = 0
            elif isinstance(command, Submit) and command.worker == ENCODE_WORKER:
                # One encode job at a time, always with the session's one encoder.
                assert not self.encodes, "two encode jobs at once"
                self.encoders.add(id(command.payload.encoder))
                assert len(self.encoders) == 1
                self.encodes[command.job_id] = command
            elif isinstance(command, Submit):
                self.aligns[command.job_id] = command
            elif isinstance(command, Cancel):
                self.live.pop(command.job_id, None)
                self.aligns.pop(command.job_id, None)
                self.encodes.pop(command.job_id, None)
            elif isinstance(command, Discard):
                # The driver drops these sends unwritten: no ack will come, the client never
                # hears them.
                dropped = [i for i, ack in enumerate(self.unacked) if ack in command.acks]
                for i in reversed(dropped):
                    ack = self.unacked.pop(i)
                    self.discarded.append((ack, self._queued_audio.pop(i)))
            elif isinstance(command, Send):
                if isinstance(command.message, bytes):
                    self.audio.append(command.message)
                    self.unacked.append(command.ack)
                    self._queued_audio.append(command.message)
                    self.log.append(("audio", command.ack))
                else:
                    self.frames.append(command.message)
                    self.log.append(("event", command.message))
            elif isinstance(command, Close):
                self.closes.append(command)
        running = [j for j in self.live if j not in self.finished]
        assert len(running) <= self.limits.engine_generations
        # Alive: still generating, or its audio not yet all written to the client.
        sent = [int(p.decode().strip("[]").split(":")[0]) for p in self.audio]
        alive = [
            j
            for j, produced in self.live.items()
            if j not in self.finished or sent.count(self.number(j)) < produced or j in self.unacked
        ]
        assert len(alive) <= 1 + self.limits.lookahead_generations
        if self.core.done:
            # Every generation is cancelled or finished: nothing left in the engine; the
            # encoder is not left in a job.
            assert all(j in self.finished for j in self.live), self.live
            assert not self.encodes

    def text(self, payload: object) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        if text.startswith('{"type": "flush"'):
            self.flushes.append(json.loads(text).get("id"))
        if text.startswith('{"type": "clear"'):
            self.log.append(("clear", None))
        self.apply(self.session.on_text(text, self.now))

    def chunk(self, job_id: Any) -> None:
        n = self.live[job_id]
        self.live[job_id] = n + 1
        pcm = f"[{self.number(job_id)}:{n}]".encode()
        self.apply(self.session.on_result(job_id, StreamChunk(pcm), self.now))

    def done(self, job_id: Any, error: bool = False) -> None:
        failure = RuntimeError("engine exploded") if error else None
        if not error:
            self.finished.add(job_id)
        else:
            self.live.pop(job_id)
        self.apply(self.session.on_result(job_id, StreamDone(failure), self.now))

    def encode(self) -> None:
        """The encode worker answers the job: each chunk's bytes unchanged (an identity codec
        that holds nothing back), no tail; the encoder handed back."""
        ((job_id, submit),) = self.encodes.items()
        del self.encodes[job_id]
        job = submit.payload
        outputs = tuple(op if isinstance(op, bytes) else b"" for op in job.ops)
        self.apply(self.session.on_result(job_id, EncodeResult(job.encoder, outputs), self.now))

    def ack(self) -> None:
        self._queued_audio.pop(0)
        self.apply(self.session.on_sent(self.unacked.pop(0), self.now))

    def events(self, kind: str | None = None) -> list[dict]:
        return [f for f in self.frames if kind is None or f.get("type") == kind]

    def run_out(self) -> None:
        """The engine finishes every running generation; the client reads everything."""
        for _ in range(1000):
            running = self.running()
            if running:
                self.chunk(running[0])
                self.done(running[0])
            elif self.encodes:
                self.encode()
            elif self.unacked:
                self.ack()
            else:
                return

    def check_events(self) -> None:
        """The event protocol's promises: no audio of a generation started before a ``clear``
        comes after it (nor after its ``cleared``); each clear answered once; flushes answered
        in order, once each; ``session_done`` last."""
        started: set[int] = set()
        silenced: set[int] = set()
        flush_ids = []
        clears = answered = 0
        for kind, item in self.log:
            if kind == "start":
                started.add(item)
            elif kind == "audio":
                assert item not in silenced, f"audio of cleared generation {item}"
            elif kind == "clear":
                silenced |= started
                clears += 1
            elif item["type"] == "cleared":
                answered += 1
                assert answered <= clears
            elif item["type"] == "flush_done":
                flush_ids.append(item["id"])
        if self.core.done and self.closes == [Close(1000)]:
            assert answered == clears
        # Answered once each, in the order asked (a clear may drop some).
        asked = iter(self.flushes)
        assert all(any(i == a for a in asked) for i in flush_ids), (flush_ids, self.flushes)
        done = self.events("session_done")
        if done:
            assert self.frames[-1] == done[0] and len(done) == 1

    def check_order(self) -> None:
        """Audio in generation order; each generation's chunks in order and contiguous."""
        seen: list[tuple[int, int]] = []
        for pcm in self.audio:
            number, n = (int(x) for x in pcm.decode().strip("[]").split(":"))
            seen.append((number, n))
        assert seen == sorted(seen)
        assert len(self.closes) <= 1


def test_round_trip_in_order_then_1000() -> None:
    h = Harness()
    h.text(CONFIG)
    for word in "Hello there. How are you?".split():
        h.text(word)
    h.text("__END__")
    while h.live.keys() - h.finished or h.unacked:
        for job in h.running():
            h.chunk(job)
            h.done(job)
        while h.unacked:
            h.ack()
    assert h.closes == [Close(1000)] and h.core.outcome == "ok"
    assert len(h.started) == 2
    h.check_order()


def test_generation_failure_is_engine_error_1011_and_cancels_the_rest() -> None:
    h = Harness(limits=SessionLimits(engine_generations=2))
    h.text(CONFIG)
    for word in "Boom now. Fine later.".split():
        h.text(word)
    h.text("__END__")
    first, second = (s.job_id for s in h.started)
    h.done(first, error=True)
    assert h.closes[0].code == 1011 and h.closes[0].error.error_type == "engine_error"
    assert "s-1" in h.closes[0].error.message and "RuntimeError" in h.closes[0].error.message
    assert second not in h.live and h.core.done and h.core.outcome == "engine_error"


def test_slow_client_holds_the_lookahead() -> None:
    h = Harness(limits=SessionLimits(lookahead_generations=1, engine_generations=1))
    h.text(CONFIG)
    for word in "One. Two. Three. Four.".split():
        h.text(word)
    h.text("__END__")
    first = h.started[0].job_id
    h.chunk(first)
    h.done(first)  # generated, but its audio is not written yet (no ack)
    assert len(h.started) == 2  # the next one is generated meanwhile...
    second = h.started[1].job_id
    h.chunk(second)
    h.done(second)
    assert len(h.started) == 2  # ...and no third until the client has read the first
    h.ack()
    assert len(h.started) == 3


def engine_step(h: Harness, action: str, running: list[int], data: st.DataObject) -> bool:
    """The engine's and the socket's side of an interleaving: a chunk, a generation's end
    (failed now and then), a write acknowledged. False when the action is not one of these."""
    if action == "chunk" and running:
        h.chunk(data.draw(st.sampled_from(running)))
    elif action == "done" and running:
        h.done(data.draw(st.sampled_from(running)))
    elif action == "fail" and running and data.draw(st.integers(0, 9)) == 0:
        h.done(data.draw(st.sampled_from(running)), error=True)
    elif action == "ack" and h.unacked:
        h.ack()
    elif action == "encode" and h.encodes:
        h.encode()
    else:
        return action in ("chunk", "done", "fail", "ack", "encode")  # nothing to do for it now
    return True


ACTIONS = st.sampled_from(
    ["word"] * 6
    + ["chunk"] * 6
    + ["done"] * 4
    + ["ack"] * 6
    + ["encode"] * 4
    + ["fail", "tick", "binary"]
)
# The published PCM (no encode job), and an FFmpeg format (every chunk through encode jobs).
FORMATS = st.sampled_from(["pcm_s16le", "mp3"])


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    lookahead=st.integers(0, 3),
    engine=st.integers(1, 3),
    config=st.sampled_from(["good"] * 8 + ["bad", "none"]),
    fmt=FORMATS,
    actions=st.lists(ACTIONS, min_size=5, max_size=200),
    end_at=st.none() | st.integers(0, 120),
    disconnect_at=st.none() | st.integers(0, 150),
    data=st.data(),
)
def test_every_interleaving_ends_and_keeps_order(
    lookahead, engine, config, fmt, actions, end_at, disconnect_at, data
):
    limits = SessionLimits(lookahead_generations=lookahead, engine_generations=engine)
    h = Harness(limits=limits)
    if config == "good":
        h.text({**CONFIG, "response_format": fmt})
    elif config == "bad":
        h.text('{"voice": "nobody"}')
    words = iter(WORDS * 5)
    for step, action in enumerate(actions):
        if step == end_at and not h.core.done:
            h.text("__END__")
        if step == disconnect_at and not h.core.done:
            h.apply(h.session.on_disconnect(h.now))
        if h.core.done:
            break
        running = h.running()
        if action == "word":
            h.text(next(words))
        elif engine_step(h, action, running, data):
            pass
        elif action == "tick":
            h.now += data.draw(st.sampled_from([0.5, 11.0]))
            h.apply(h.session.on_timer(h.now))
        elif action == "binary" and data.draw(st.integers(0, 19)) == 0:
            h.apply(h.session.on_bytes(b"\x00", h.now))
        h.check_order()
    # The client ends its text and listens to the end; the engine finishes every generation.
    if not h.core.done:
        h.text("__END__")
    for _ in range(10_000):
        if h.core.done:
            break
        running = h.running()
        if running:
            h.chunk(running[0])
            h.done(running[0])
        elif h.encodes:
            h.encode()
        elif h.unacked:
            h.ack()
        else:
            h.now += 400
            h.apply(h.session.on_timer(h.now))
    if not h.core.done:
        h.apply(h.session.on_disconnect(h.now))
    assert h.core.done
    h.check_order()
    event(f"outcome {h.core.outcome}; generations {min(len(h.started), 3)}+")
    # Inputs after the end change nothing.
    h.apply(h.session.on_text("more", h.now))
    h.apply(h.session.on_disconnect(h.now))


# -- the event protocol (events: true) ------------------------------------------------------------
def test_published_first_frame_gets_no_events_and_untouched_audio() -> None:
    h = Harness()
    h.text(CONFIG)
    h.text("Hello there.")
    h.text("__END__")
    h.run_out()
    assert h.frames == [] and h.closes == [Close(1000)]
    assert h.audio == [b"[0:0]"]  # the engine's bytes, as they were


def test_turns_flush_done_after_their_audio_then_session_done() -> None:
    h = Harness()
    h.text({**EVENTS, "buffer_size": 10})
    created = h.frames[0]
    assert created == {
        "type": "session_created",
        "session_id": "s",
        "voice": "tara",
        "response_format": "pcm_s16le",
        "sample_rate": 24000,
    }
    for turn in range(3):
        for delta in ("Hel", "lo wor", "ld, turn", f" {turn}"):  # verbatim deltas
            h.text(delta)
        h.text(json.dumps({"type": "flush", "id": f"t{turn}"}))
        assert h.started[-1].payload.text == f"Hello world, turn {turn}"
        h.run_out()
        assert h.frames[-1] == {"type": "flush_done", "id": f"t{turn}"}
        kinds = [f["type"] for f in h.frames[-3:]]
        assert kinds == ["audio_start", "audio_done", "flush_done"]
    done = h.events("audio_done")
    assert [d["generation"] for d in done] == [1, 2, 3]
    assert all(a["end_s"] == b["start_s"] for a, b in zip(done, done[1:], strict=False))
    h.text(json.dumps({"type": "flush", "id": "empty"}))  # nothing buffered: answered at once
    assert h.frames[-1] == {"type": "flush_done", "id": "empty"}
    h.text(json.dumps({"type": "end"}))
    assert h.frames[-1]["type"] == "session_done" and h.frames[-1]["generations"] == 3
    assert h.closes == [Close(1000)]
    h.check_events()


def test_clear_aborts_generations_and_drops_their_queued_audio() -> None:
    h = Harness(limits=SessionLimits(engine_generations=2, lookahead_generations=1))
    h.text(EVENTS)
    h.text("First sentence here. Second one follows. ")
    h.text(json.dumps({"type": "flush"}))
    first, second = (s.job_id for s in h.started)
    h.chunk(first)
    h.chunk(first)
    h.ack()  # the client heard one chunk; the other is still queued
    h.chunk(second)  # waits its turn inside the core
    h.text(json.dumps({"type": "clear", "id": 7}))
    assert h.frames[-1] == {"type": "cleared", "id": 7, "generations_aborted": 2}
    assert first not in h.live and second not in h.live  # engine requests cancelled
    assert h.discarded == [(first, b"[0:1]")] and not h.unacked
    assert h.core.aborted_generations == 2
    # Late chunks of the cleared generations are ignored; the next turn works.
    h.apply(h.session.on_result(first, StreamChunk(b"late"), h.now))
    h.text("Next turn.")
    h.text(json.dumps({"type": "flush", "id": "next"}))
    h.run_out()
    assert h.frames[-1] == {"type": "flush_done", "id": "next"}
    assert h.started[-1].payload.text == "Next turn."
    h.check_events()


def test_update_changes_the_voice_for_the_text_after_it() -> None:
    h = Harness()
    h.text({**EVENTS, "buffer_size": 10})
    h.text("Spoken by tara")
    h.text(json.dumps({"type": "update", "voice": "Leo", "temperature": 0.9}))
    h.text(" and this by leo.")
    h.text(json.dumps({"type": "flush"}))
    h.run_out()
    requests = [s.payload for s in h.started]
    assert [(r.text, r.voice) for r in requests] == [
        ("Spoken by tara", "tara"),
        ("and this by leo.", "leo"),
    ]
    assert requests[1].params.temperature == 0.9 and requests[0].params.temperature == 0.6


def test_bad_control_messages_are_recoverable() -> None:
    h = Harness()
    h.text(EVENTS)
    bad = [
        ("{not json", "invalid_json"),
        ('{"type": "dance"}', "unknown_control"),
        ('{"type": "flush", "extra": 1}', "invalid_message"),
        ('{"type": "update", "voice": "nobody"}', "invalid_message"),
        ('{"type": "update", "temperature": "hot"}', "invalid_message"),
    ]
    for frame, error_type in bad:
        h.text(frame)
        assert h.frames[-1]["type"] == "error"
        assert h.frames[-1]["body"]["error_type"] == error_type
        assert h.frames[-1]["body"]["recoverable"] is True
    assert not h.closes
    h.text(json.dumps({"type": "text", "text": "{braces} are spoken."}))
    h.text("__END__")
    h.run_out()
    assert h.started[0].payload.text == "{braces} are spoken." and h.closes == [Close(1000)]


EVENT_ACTIONS = st.sampled_from(
    ["word"] * 6
    + ["chunk"] * 6
    + ["done"] * 4
    + ["ack"] * 6
    + ["encode"] * 4
    + ["flush"] * 2
    + ["clear", "update", "badctl", "fail", "tick"]
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    lookahead=st.integers(0, 3),
    engine=st.integers(1, 3),
    fmt=FORMATS,
    actions=st.lists(EVENT_ACTIONS, min_size=5, max_size=200),
    disconnect_at=st.none() | st.integers(0, 150),
    data=st.data(),
)
def test_every_event_interleaving_ends_and_keeps_its_promises(
    lookahead, engine, fmt, actions, disconnect_at, data
):
    limits = SessionLimits(lookahead_generations=lookahead, engine_generations=engine)
    h = Harness(limits=limits)
    h.text({**EVENTS, "response_format": fmt})
    words = iter([f"{w} " for w in WORDS * 5])
    flushes = 0
    for step, action in enumerate(actions):
        if step == disconnect_at:
            h.apply(h.session.on_disconnect(h.now))
        if h.core.done:
            break
        running = h.running()
        if action == "word":
            h.text(next(words))
        elif action == "flush":
            flushes += 1
            h.text(json.dumps({"type": "flush", "id": flushes}))
        elif action == "clear":
            h.text(json.dumps({"type": "clear"}))
        elif action == "update":
            h.text(json.dumps({"type": "update", "voice": data.draw(st.sampled_from(VOICES))}))
        elif action == "badctl":
            h.text('{"type": "nope"}')
        elif engine_step(h, action, running, data):
            pass
        elif action == "tick":
            h.now += 0.5
            h.apply(h.session.on_timer(h.now))
        h.check_order()
        h.check_events()
    if not h.core.done:
        h.text(json.dumps({"type": "end"}))
        h.run_out()
        assert h.core.done and h.closes == [Close(1000)]
        assert h.frames[-1]["type"] == "session_done"
        # Every flush not cleared away was answered.
        assert len(h.events("flush_done")) <= flushes
    assert h.core.done
    h.check_order()
    h.check_events()


def test_word_timestamps_come_before_audio_done_on_the_session_timeline() -> None:
    from orpheus_tts.alignment import ALIGN_WORKER, WordTime

    h = Harness(words_available=True)
    h.text({**EVENTS, "buffer_size": 10, "word_timestamps": True})
    for turn in range(2):
        h.text("Hello there.")
        h.text(json.dumps({"type": "flush", "id": turn}))
        job = h.started[-1].job_id
        h.chunk(job)
        h.done(job)
        while h.unacked:
            h.ack()
        ((align_id, submit),) = h.aligns.items()
        pcm = f"[{h.number(job)}:0]".encode()
        assert submit.worker == ALIGN_WORKER and submit.payload.pcm == pcm
        assert submit.payload.text == "Hello there."
        assert h.frames[-1]["type"] == "audio_start"  # held until the words are known
        h.aligns.clear()
        words = [WordTime("Hello", 0.01, 0.2), WordTime("there.", 0.25, 0.5)]
        h.apply(h.session.on_result(align_id, words, h.now))
        stamps, done, flushed = h.frames[-3:]
        offset = h.events("audio_start")[-1]["start_s"]
        assert stamps["type"] == "word_timestamps" and stamps["generation"] == turn + 1
        assert stamps["words"][0] == {"word": "Hello", "start_s": round(offset + 0.01, 3),
                                      "end_s": round(offset + 0.2, 3)}  # fmt: skip
        assert done["type"] == "audio_done" and flushed == {"type": "flush_done", "id": turn}
    # A failed alignment costs only the timestamps: empty words, the audio was sent.
    h.text("Again.")
    h.text(json.dumps({"type": "flush", "id": "x"}))
    job = h.started[-1].job_id
    h.chunk(job)
    h.done(job)
    h.ack()
    (align_id,) = h.aligns
    h.apply(h.session.on_result(align_id, RuntimeError("aligner failed"), h.now))
    assert h.events("word_timestamps")[-1]["words"] == []
    assert h.frames[-1] == {"type": "flush_done", "id": "x"}


def test_word_timestamps_without_an_aligner_or_events_are_refused() -> None:
    h = Harness()
    h.text({**EVENTS, "word_timestamps": True})
    assert h.closes[0].code == 1003 and h.closes[0].error.error_type == "unsupported"
    h = Harness(words_available=True)
    h.text({**CONFIG, "word_timestamps": True})
    assert h.closes[0].code == 1008


def test_disconnect_cancels_a_pending_alignment() -> None:
    h = Harness(words_available=True)
    h.text({**EVENTS, "word_timestamps": True})
    h.text("Hello there.")
    h.text(json.dumps({"type": "flush"}))
    job = h.started[-1].job_id
    h.chunk(job)
    h.done(job)
    assert h.aligns
    h.apply(h.session.on_disconnect(h.now))
    assert not h.aligns and h.core.done  # the aligner job was cancelled
