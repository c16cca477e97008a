"""The project's tooling, by trade:

- ``scripts.clients``: one client per protocol (``stt``, ``tts`` and its event mode,
  ``tts_dialects``), the handshake and the API-key rule they share; used by the CLI clients, the
  smoke test, the benchmarks and the end-to-end tests alike;
- ``scripts.local``: the real Truss server run locally (``serve``), its test/benchmark launcher
  (``spawn``) and the ``demo``;
- ``scripts.bench``: benchmarks, soak, sample generation, the GPU check, WER and percentiles;
- ``scripts.deploy``: the Baseten API, push, smoke test, promote, the deploy pipeline, the image
  check.

Installed by ``make`` (``pip install -e .``): the console commands in ``pyproject.toml`` run
them, and ``python scripts/<trade>/<name>.py`` works from a checkout as well."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = REPO_ROOT / "samples"
