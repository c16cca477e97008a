"""How every client here authenticates to Baseten: ``Authorization: Api-Key <key>``, sent only
to remote hosts (a local server needs none). Standard library only: the deploy job imports it."""

from __future__ import annotations

from urllib.parse import urlsplit

API_KEY_ENV = "BASETEN_API_KEY"  # where every tool reads the Baseten API key
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


def is_local(url: str) -> bool:
    """Whether the URL points at this machine (no API key needed)."""
    return (urlsplit(url).hostname or "") in LOCAL_HOSTS


def api_key_headers(url: str, api_key: str | None) -> dict[str, str]:
    """The header Baseten expects, for a remote URL with a key; none otherwise."""
    if api_key and not is_local(url):
        return {"Authorization": f"Api-Key {api_key}"}
    return {}
