#!/usr/bin/env python3
"""Which models to deploy: what changed since each model's LAST SUCCESSFUL deploy.

    python scripts/deploy/changed.py [--repo DIR] [--head SHA]   # models=[...] for $GITHUB_OUTPUT

Production's deployment name is the commit it was pushed from (push.py), so the last successful
deploy is what production serves: a target is deployed when ``git diff <that sha> HEAD`` touches
its truss or its external package dirs, when the model has no production yet, or when production
is not a known commit (a dirty push). A cancelled or failed run loses nothing: the next run
still sees the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from scripts.deploy.baseten_api import ManagementClient, api_key_from_env
from scripts.deploy.promote import get_production
from scripts.deploy.push import truss_config

TARGETS = {  # CI's name -> (truss, config)
    "whisper": ("whisper_streaming_truss", "config.yaml"),
    "orpheus": ("orpheus_tts_truss", "config.yaml"),
    "orpheus-http": ("orpheus_tts_truss", "config_http.yaml"),
}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)


def needs_deploy(
    client: ManagementClient, models: dict[str, str], repo: Path, target: str, head: str
) -> str:
    """Why the target needs a deploy, or "" when production already runs what HEAD holds."""
    truss, config_file = TARGETS[target]
    config = truss_config(repo / truss, config_file)
    model_id = models.get(str(config.get("model_name")))
    if model_id is None:
        return "no such model yet"
    current = (get_production(client, model_id) or {}).get("current_deployment") or {}
    sha = str(current.get("name") or "")
    if (
        not re.fullmatch(r"[0-9a-f]{7,40}", sha)
        or _git(repo, "cat-file", "-e", f"{sha}^{{commit}}").returncode
    ):
        return f"production {current.get('id')} ({sha or 'none'}) is not a known commit"
    extra = [
        os.path.normpath(os.path.join(truss, p)) for p in config.get("external_package_dirs") or []
    ]
    diff = _git(repo, "diff", "--name-only", sha, head, "--", truss, *extra)
    changed = [line for line in diff.stdout.splitlines() if line]
    return f"{len(changed)} files changed since {sha}" if changed or diff.returncode else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--head", default="HEAD")
    args = parser.parse_args(argv)
    with ManagementClient(api_key_from_env()) as client:
        models = {str(m.get("name")): str(m.get("id")) for m in client.list_models()}
        chosen = []
        for target in TARGETS:
            reason = needs_deploy(client, models, args.repo, target, args.head)
            print(f"{target}: {reason or 'production is up to date'}", file=sys.stderr)
            chosen += [target] * bool(reason)
    print(f"models={json.dumps(chosen)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
