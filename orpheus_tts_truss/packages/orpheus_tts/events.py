"""What the TTS core (``orpheus_tts.protocol.TtsCore``) says, typed: the codecs at the edge
(``orpheus_tts.dialects``) turn these into each vendor's frames.

The core's methods return ``Output``s: the driver's job commands (``StartStream``, ``Submit``,
``Cancel``, ``Discard``), which go to the driver as they are, and ``Event``s for the codec: the
event protocol's messages (``orpheus_tts.schema.ServerEvent``), and the three below.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from orpheus_tts.schema import ServerEvent
from speech_common.driver import Command
from speech_common.ws import ProtocolError


@dataclass(frozen=True)
class Audio:
    """Encoded audio, in text order. ``ack`` (its generation) must come back to the core
    (``on_sent``) once written: the lookahead counts what the client has received. None for a
    codec's tail at the end of a turn (nothing waits for it)."""

    data: bytes
    ack: Hashable | None = None


@dataclass(frozen=True)
class Rejected:
    """An input refused with a recoverable error: the client is told, the session goes on."""

    error: ProtocolError


@dataclass(frozen=True)
class Ended:
    """The session is over: after its last audio (``error`` None: a normal close), or failed
    with ``error`` (its close code). A client that left gets no ``Ended``: nobody to tell."""

    error: ProtocolError | None = None


Event = ServerEvent | Audio | Rejected | Ended
Output = Command | Event
