"""The project's tooling: local serving (serve, serving), protocol clients (stt_client,
tts_client, tts_dialect_clients), benchmarks and checks (bench_*, soak, stats, gpu_check,
image_check) and deployment (baseten_api, push, smoke_test, promote, deploy).

Installed by ``make`` (``pip install -e .``): the console commands in ``pyproject.toml`` run
them, and ``python scripts/<name>.py`` works from a checkout as well."""
