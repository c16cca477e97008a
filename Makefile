# Two commands on a fresh machine with only Python:  make demo  |  make test
PYTHON ?= python3
VENV := .venv
CLIENTS_VENV := .venv-clients
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv venv-clients demo test test-fast lint image-check gpu-wheels gpu-check soak-whisper soak-orpheus serve-whisper serve-orpheus bench-stt bench-tts bench-capacity-whisper bench-capacity-orpheus deploy-whisper deploy-orpheus clean

$(STAMP): requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	# The project itself, editable: its packages importable and its commands on the venv's PATH.
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP)

## The real client libraries of tests/test_clients.py, in their own venv (their pins may clash with ours).
$(CLIENTS_VENV)/.installed: requirements-clients.txt constraints-clients.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --only-binary=:all: --no-binary=docopt -r requirements-clients.txt -c constraints-clients.txt
	touch $(CLIENTS_VENV)/.installed

venv-clients: $(CLIENTS_VENV)/.installed

## Streams a bundled speech sample through the whisper truss on the real Truss server (CPU, tiny.en).
demo: venv
	$(BIN)/python scripts/local/demo.py

## Unit + end-to-end tests (real Truss server over real WebSockets), lint first; two workers,
## each test file on one (the end-to-end tests' real-time pacing leaves a core idle).
test: venv venv-clients
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: venv
	$(BIN)/python -m pytest -m "not e2e"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Each truss's production image resolves (uv, Linux x86-64); also part of `make test`.
image-check: venv
	$(BIN)/python scripts/deploy/image_check.py

## Pure-Python wheels the GPU check needs beyond torch/transformers/numpy (carry .gpu_wheels/).
GPU_WHEELS := snac==1.2.1 einops==0.8.2 prometheus-client==0.26.0
gpu-wheels: venv
	$(BIN)/python -m pip download --quiet --no-deps --dest .gpu_wheels $(GPU_WHEELS)

## On a CUDA machine (no venv there): SNAC parity/throughput and the Orpheus pipeline -> JSON.
## The carried wheels go to a private folder, not the machine's site-packages.
gpu-check:
	$(PYTHON) -m pip install --quiet --no-index --no-deps --target .gpu_site .gpu_wheels/*.whl
	PYTHONPATH=.gpu_site:.:shared:orpheus_tts_truss/packages $(PYTHON) scripts/bench/gpu_check.py --out bench_results/gpu_check.json

## Reliability soak on the local server (fuzz, disconnect storm, overload, RSS); not in CI.
soak-whisper: venv
	$(BIN)/python scripts/bench/soak.py whisper --sequential 1000

soak-orpheus: venv
	$(BIN)/python scripts/bench/soak.py orpheus --sequential 1000

serve-whisper: venv
	$(BIN)/python scripts/local/serve.py whisper_streaming_truss

serve-orpheus: venv
	$(BIN)/python scripts/local/serve.py orpheus_tts_truss --dummy-weights

bench-stt: venv
	$(BIN)/python scripts/bench/stt.py

bench-tts: venv
	$(BIN)/python scripts/bench/tts.py --dummy-weights

## The knee on this machine (most real-time sessions within <truss>/slo.yaml), written down:
## scripts/local/cpu_standin.yaml without a GPU, config.yaml + autoscaling.yaml with one.
bench-capacity-whisper: venv
	$(BIN)/python scripts/bench/capacity.py whisper_streaming_truss --write

bench-capacity-orpheus: venv
	$(BIN)/python scripts/bench/capacity.py orpheus_tts_truss --dummy-weights --write

deploy-whisper: venv
	$(BIN)/python scripts/deploy/deploy.py whisper_streaming_truss

deploy-orpheus: venv
	$(BIN)/python scripts/deploy/deploy.py orpheus_tts_truss

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .truss_build .pytest_cache .ruff_cache .gpu_wheels .gpu_site
