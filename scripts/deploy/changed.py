#!/usr/bin/env python3
"""Which models to deploy: what changed since each model's LAST SUCCESSFUL deploy.

    python scripts/deploy/changed.py   # models=[...] for $GITHUB_OUTPUT; reasons on stderr

Production's deployment name is the commit it was pushed from (push.py), so the last successful
deploy is what production serves: a target is deployed when ``git diff <that sha> HEAD`` touches
its truss or its external package dirs, when the model has no production yet, or when production
is not a known commit (a dirty push). A cancelled or failed run loses nothing: the next run
still sees the difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from scripts.deploy.baseten_api import ConfigError, ManagementClient, api_key_from_env
from scripts.deploy.push import git, pushed_paths, truss_config

TARGETS = {  # CI's name -> (truss, config)
    "whisper": ("whisper_streaming_truss", "config.yaml"),
    "orpheus": ("orpheus_tts_truss", "config.yaml"),
    "orpheus-http": ("orpheus_tts_truss", "config_http.yaml"),
}


def needs_deploy(client: ManagementClient, models: dict[str, str], repo: Path, target: str) -> str:
    """Why the target needs a deploy, or "" when production already runs what the checkout's HEAD
    holds; ``models``: name -> id."""
    truss, config_file = TARGETS[target]
    config = truss_config(repo / truss, config_file)
    if (model_id := models.get(str(config.get("model_name")))) is None:
        return "no such model yet"
    current = (client.production(model_id) or {}).get("current_deployment") or {}
    sha = str(current.get("name") or "")
    paths = pushed_paths(repo / truss, config)
    try:  # <sha>^{commit}: a commit, not some other ref
        diff = git(["diff", "--name-only", f"{sha}^{{commit}}", "HEAD", "--", *paths], repo)
    except ConfigError:
        diff = None
    if diff is None or not re.fullmatch(r"[0-9a-f]{7,40}", sha):
        return f"production {current.get('id')} ({sha or 'none'}) is not a known commit"
    changed = diff.split()
    return f"{len(changed)} files changed since {sha}" if changed else ""


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    with ManagementClient(api_key_from_env()) as client:
        models, chosen = client.model_ids(), []
        for target in TARGETS:
            reason = needs_deploy(client, models, Path.cwd(), target)
            print(f"{target}: {reason or 'production is up to date'}", file=sys.stderr)
            chosen += [target] * bool(reason)
    print(f"models={json.dumps(chosen)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
