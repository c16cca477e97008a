"""Prometheus metrics that survive re-registration (tests load both trusses, load() may rerun).

The Truss server exposes prometheus_client's default registry at ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

_CACHE: dict[str, Any] = {}


def _get_or_create(cls: type, name: str, documentation: str, **kwargs: Any) -> Any:
    if name in _CACHE:
        return _CACHE[name]
    try:
        metric = cls(name, documentation, **kwargs)
    except ValueError:  # registered by another import path of this module
        metric = REGISTRY._names_to_collectors[name]  # noqa: SLF001
    _CACHE[name] = metric
    return metric


def counter(name: str, documentation: str, **kwargs: Any) -> Counter:
    return _get_or_create(Counter, name, documentation, **kwargs)


def gauge(name: str, documentation: str, **kwargs: Any) -> Gauge:
    return _get_or_create(Gauge, name, documentation, **kwargs)


def histogram(name: str, documentation: str, **kwargs: Any) -> Histogram:
    return _get_or_create(Histogram, name, documentation, **kwargs)
