"""The wire formats at the edge of the one STT core, a codec each (``base.Codec``): Baseten's
protocol (``baseten``, the default), Deepgram's live protocol (``deepgram``) and Deepgram Flux's
turn-based one (``flux``), chosen by the WebSocket handshake's query string.

Vendor SDKs that append their own path to a base URL (``/v1/listen``) are given the Truss
WebSocket URL followed by ``?_p=``: the path, and any query the SDK adds after it, land in the
``_p`` parameter, which ``query_items`` opens up again."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from ..protocol import SttCore
from .base import Codec
from .baseten import BasetenCodec
from .deepgram import DeepgramCodec, wants_deepgram
from .flux import FluxCodec, wants_flux

__all__ = ["BasetenCodec", "Codec", "DeepgramCodec", "FluxCodec", "choose_codec", "query_items"]

PATH_PARAM = "_p"


def query_items(websocket: Any) -> list[tuple[str, str]]:
    """The handshake's query parameters, repeated keys kept (Deepgram sends ``keyterm`` once per
    term), with a ``_p`` that swallowed an SDK's path and query opened up: ``_p=/v1/listen?a=1``
    -> ``_p=/v1/listen``, ``a=1``."""
    params = getattr(websocket, "query_params", None)
    if params is None:
        return []
    items = params.multi_items() if hasattr(params, "multi_items") else list(params.items())
    out: list[tuple[str, str]] = []
    for key, value in items:
        if key == PATH_PARAM and "?" in value:
            path, _, rest = value.partition("?")
            out.append((key, path))
            out.extend(parse_qsl(rest, keep_blank_values=True))
        else:
            out.append((key, value))
    return out


def choose_codec(core: SttCore, query: Iterable[tuple[str, str]] = (), **deepgram: Any) -> Codec:
    """Flux's protocol when the query names a flux model (or Flux's path), Deepgram's when it
    names one of Deepgram's parameters (or its path), else Baseten's. ``deepgram``: the Deepgram
    codecs' model_name, request_id, created."""
    query = list(query)
    if wants_flux(query):  # Flux's messages name no model and no creation time
        return FluxCodec(core, query, request_id=deepgram.get("request_id"))
    if wants_deepgram(query):
        return DeepgramCodec(core, query, **deepgram)
    return BasetenCodec(core)
