"""Settings, load errors, and the vLLM engine's loop bridge against a fake ``vllm`` module.

vLLM itself cannot be installed on CPU; the fake implements the documented surface the engine uses
(AsyncEngineArgs, AsyncLLM.from_engine_args/generate/abort/shutdown, TokensPrompt, SamplingParams,
RequestOutputKind.DELTA) so the threading, streaming and abort logic is exercised for real.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from dataclasses import dataclass, field

import pytest

from orpheus_tts.engine import SamplingParams
from orpheus_tts.runtime import WeightsNotFound, load_runtime
from orpheus_tts.settings import OrpheusSettings
from orpheus_tts.tokens import END_OF_SPEECH_TOKEN_ID


# -- settings ---------------------------------------------------------------------------------
def test_settings_from_metadata_with_env_overrides():
    s = OrpheusSettings.from_metadata(
        {"orpheus_engine": "vllm", "max_model_len": 8192, "unrelated": 1, "snac_noise": True},
        environ={"ORPHEUS_ENGINE": "transformers", "SNAC_NOISE": "0", "SNAC_MAX_BATCH": "4"},
    )
    assert s.orpheus_engine == "transformers"
    assert s.max_model_len == 8192
    assert s.snac_noise is False
    assert s.snac_max_batch == 4  # env override of a key config.yaml does not list
    assert s.orpheus_model_dir == "/app/weights/orpheus"
    assert s.window_policy.tokens_before_first_audio == 21


def test_settings_reject_unknown_engine():
    with pytest.raises(ValueError, match="orpheus_engine"):
        OrpheusSettings.from_metadata({"orpheus_engine": "tgi"}, environ={})


def test_missing_weights_error_says_what_is_needed(tmp_path):
    settings = OrpheusSettings.from_metadata(
        {
            "orpheus_engine": "transformers",
            "orpheus_device": "cpu",
            "orpheus_model_dir": str(tmp_path / "orpheus"),
            "snac_model_dir": str(tmp_path / "snac"),
        },
        environ={},
    )
    with pytest.raises(WeightsNotFound) as err:
        load_runtime(settings)
    message = str(err.value)
    for needed in ("hf_access_token", "ORPHEUS_DUMMY_WEIGHTS=1", "SNAC_MODEL_DIR", "snac_24khz"):
        assert needed in message


def test_cuda_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="no GPU"):
        load_runtime(OrpheusSettings.from_metadata({"orpheus_dummy_weights": True}, environ={}))


def test_vllm_engine_without_vllm_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError
    from orpheus_tts.vllm_engine import VllmEngine

    with pytest.raises(RuntimeError, match="ORPHEUS_ENGINE=transformers"):
        VllmEngine("/nowhere")


# -- fake vllm ----------------------------------------------------------------------------------
@dataclass
class _Completion:
    token_ids: list[int]


@dataclass
class _Output:
    outputs: list[_Completion]
    finished: bool


@dataclass
class _FakeAsyncLLM:
    args: dict
    hang: bool = False
    loop_thread: str = ""
    aborted: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    seen: list[tuple] = field(default_factory=list)
    shut_down: bool = False

    @classmethod
    def from_engine_args(cls, args):
        asyncio.get_running_loop()  # must be created on a running loop (the engine loop)
        return cls(args.kwargs, loop_thread=threading.current_thread().name)

    async def generate(self, prompt, sampling_params, request_id):
        assert threading.current_thread().name == self.loop_thread
        self.seen.append((request_id, prompt["prompt_token_ids"], sampling_params.kwargs))
        tokens = [128266 + i for i in range(6)] + [END_OF_SPEECH_TOKEN_ID]
        try:
            for i in range(0, len(tokens), 3):
                await asyncio.sleep(0.001)
                last = i + 3 >= len(tokens)
                yield _Output([_Completion(tokens[i : i + 3])], finished=last and not self.hang)
            if self.hang:
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.append(request_id)
            raise

    async def abort(self, request_id):
        self.aborted.append(request_id)

    def shutdown(self):
        self.shut_down = True


class _Kwargs:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.AsyncEngineArgs = _Kwargs
    vllm.SamplingParams = _Kwargs
    vllm.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind = types.SimpleNamespace(DELTA="delta")
    async_llm = types.ModuleType("vllm.v1.engine.async_llm")
    async_llm.AsyncLLM = _FakeAsyncLLM
    for name, module in {
        "vllm": vllm,
        "vllm.sampling_params": sampling,
        "vllm.v1": types.ModuleType("vllm.v1"),
        "vllm.v1.engine": types.ModuleType("vllm.v1.engine"),
        "vllm.v1.engine.async_llm": async_llm,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    from orpheus_tts.vllm_engine import VllmEngine

    engine = VllmEngine("/weights/orpheus", max_model_len=100, quantization="")
    yield engine
    engine.shutdown()
    assert engine._engine.shut_down  # noqa: SLF001


async def test_vllm_streams_delta_tokens_from_its_own_loop(fake_vllm):
    fake = fake_vllm._engine  # noqa: SLF001
    assert fake.loop_thread == "vllm-engine-loop"
    assert fake.args["max_model_len"] == 100 and fake.args["quantization"] is None
    prompt = [128259, 128000, 1, 2, 128009, 128260, 128261, 128257]
    ids = [t async for t in fake_vllm.generate("g1", prompt, SamplingParams(max_tokens=2000))]
    assert ids == [128266 + i for i in range(6)] + [END_OF_SPEECH_TOKEN_ID]
    request_id, sent_prompt, sp = fake.seen[0]
    assert (request_id, sent_prompt) == ("g1", prompt)
    assert sp["max_tokens"] == 100 - len(prompt)  # clipped to the context
    assert sp["stop_token_ids"] == [END_OF_SPEECH_TOKEN_ID]
    assert sp["output_kind"] == "delta" and sp["detokenize"] is False
    assert list(fake_vllm.aborted) == [] and fake.aborted == []


async def test_vllm_close_aborts_the_request(fake_vllm):
    fake = fake_vllm._engine  # noqa: SLF001
    fake.hang = True
    stream = fake_vllm.generate("g2", [1, 2, 3], SamplingParams())
    first = await stream.__anext__()
    assert first == 128266
    await stream.aclose()
    for _ in range(100):  # the abort runs on the engine loop thread
        if fake.cancelled and fake.aborted:
            break
        await asyncio.sleep(0.01)
    assert fake.cancelled == ["g2"] and "g2" in fake.aborted
    assert list(fake_vllm.aborted) == ["g2"]


async def test_vllm_warmup_from_a_sync_caller(fake_vllm):
    from orpheus_tts.runtime import _run_blocking

    _run_blocking(fake_vllm.warmup())  # what load_runtime does from model.load()'s thread
    assert fake_vllm._engine.seen[-1][0] == "warmup"  # noqa: SLF001


# -- the real-weights loading path, with small random checkpoints written to disk ---------------
@pytest.fixture(scope="module")
def weights_dirs(tmp_path_factory):
    import json

    import torch
    from snac import SNAC

    from orpheus_tts.dummy import build_dummy_llama, build_dummy_tokenizer
    from orpheus_tts.snac_decoder import SNAC_24KHZ_CONFIG

    root = tmp_path_factory.mktemp("weights")
    orpheus_dir, snac_dir = root / "orpheus", root / "snac"
    build_dummy_llama(max_model_len=512).save_pretrained(orpheus_dir)
    build_dummy_tokenizer().save_pretrained(orpheus_dir)
    snac_dir.mkdir()
    config = {**SNAC_24KHZ_CONFIG, "decoder_dim": 64}  # narrow: same format, quick to save
    (snac_dir / "config.json").write_text(json.dumps(config))
    torch.save(SNAC(**config).state_dict(), snac_dir / "pytorch_model.bin")
    return orpheus_dir, snac_dir


async def test_checkpoint_directories_load_and_serve_on_transformers(weights_dirs):
    from orpheus_tts.synth import GenerationStats

    orpheus_dir, snac_dir = weights_dirs
    settings = OrpheusSettings.from_metadata(
        {
            "orpheus_engine": "transformers",
            "orpheus_device": "cpu",
            "orpheus_model_dir": str(orpheus_dir),
            "snac_model_dir": str(snac_dir),
            "max_model_len": 512,
            "snac_max_batch": 2,
            "orpheus_constrain_audio": True,  # real weights: off by default; on here so a
            # random model yields frames (the unmasked path is tested in test_orpheus_engine)
        },
        environ={},
    )
    runtime = load_runtime(settings)
    try:
        assert runtime.tokenizer("tara: a")["input_ids"][0] == 128000
        stats = GenerationStats()
        params = SamplingParams(max_tokens=29, seed=0)
        pcm = b"".join(
            [c async for c in runtime.synthesizer.stream("a", "tara", params, "r", stats)]
        )
        assert stats.tokens <= 29
        assert len(pcm) == stats.frames * 4096
        assert stats.frames == 4 and stats.dropped_tokens == 0  # 4 frames + stop in 29 tokens
    finally:
        runtime.shutdown()


def test_vllm_starts_before_this_process_touches_cuda(weights_dirs, fake_vllm, monkeypatch):
    """vLLM forks its engine core: a CUDA context created earlier in this process breaks it."""
    import torch

    events: list[str] = []

    def cuda_touched(*_args, **_kwargs):
        events.append("cuda")
        return True

    for name in ("is_available", "init", "_lazy_init", "device_count", "current_device"):
        monkeypatch.setattr(torch.cuda, name, cuda_touched)
    start = _FakeAsyncLLM.from_engine_args.__func__

    def from_engine_args(cls, args):
        events.append("engine")
        return start(cls, args)

    monkeypatch.setattr(_FakeAsyncLLM, "from_engine_args", classmethod(from_engine_args))
    # The driver check (a child process; no libcuda here) comes first of all.
    monkeypatch.setattr("orpheus_tts.runtime.check_cuda_driver", lambda: events.append("driver"))
    orpheus_dir, snac_dir = weights_dirs
    settings = OrpheusSettings.from_metadata(
        {
            "orpheus_engine": "vllm",
            "orpheus_device": "cuda",
            "snac_device": "cpu",  # no GPU here: SNAC decodes on CPU, the order is what counts
            "orpheus_model_dir": str(orpheus_dir),
            "snac_model_dir": str(snac_dir),
            "max_model_len": 512,
            "snac_max_batch": 1,
        },
        environ={},
    )
    runtime = load_runtime(settings)
    try:
        assert events[:2] == ["driver", "engine"], events
    finally:
        runtime.shutdown()


# -- the warm-up runs the way real requests run ------------------------------------------------
def test_warmup_params_are_real_sessions_sampling_unseeded():
    from orpheus_tts.tokens import SLOTS_PER_FRAME
    from orpheus_tts.vllm_engine import warmup_params

    real = SamplingParams()  # what the model's sessions start from (model.py, protocol.py)
    params = warmup_params()
    assert params.seed is None  # a seed sends vLLM's sampler down its PyTorch path
    assert (params.temperature, params.top_p, params.repetition_penalty) == (
        real.temperature,
        real.top_p,
        real.repetition_penalty,
    )
    assert params.stop_token_ids == real.stop_token_ids
    assert params.max_tokens == 4 * SLOTS_PER_FRAME
    # Defaults changed elsewhere are followed, and a seeded default is not.
    assert warmup_params(SamplingParams(top_p=0.9, seed=7)) == SamplingParams(
        top_p=0.9, max_tokens=4 * SLOTS_PER_FRAME
    )


async def test_vllm_warmup_sends_what_a_session_sends(fake_vllm):
    from orpheus_tts.runtime import _run_blocking

    _run_blocking(fake_vllm.warmup())
    ids = [t async for t in fake_vllm.generate("s-1", [1, 2, 3], SamplingParams(max_tokens=50))]
    assert ids
    (_, _, warm), (_, _, real) = fake_vllm._engine.seen[-2:]  # noqa: SLF001
    assert warm["seed"] is None and real["seed"] is None
    assert {k: v for k, v in warm.items() if k != "max_tokens"} == {
        k: v for k, v in real.items() if k != "max_tokens"
    }


def test_a_driver_too_old_stops_the_load_before_vllm_starts(weights_dirs, fake_vllm, monkeypatch):
    from speech_common.cuda_driver import CudaDriverError

    started: list[str] = []
    monkeypatch.setattr(
        _FakeAsyncLLM, "from_engine_args", classmethod(lambda cls, args: started.append("engine"))
    )

    def too_old():
        raise CudaDriverError("host driver supports CUDA 12.8; install cuda-compat-13-0")

    monkeypatch.setattr("orpheus_tts.runtime.check_cuda_driver", too_old)
    orpheus_dir, snac_dir = weights_dirs
    settings = OrpheusSettings.from_metadata(
        {"orpheus_engine": "vllm", "orpheus_device": "cuda", "orpheus_model_dir": str(orpheus_dir),
         "snac_model_dir": str(snac_dir)},
        environ={},
    )  # fmt: skip
    with pytest.raises(CudaDriverError, match="cuda-compat-13-0"):
        load_runtime(settings)
    assert started == []


def test_driver_check_matches_the_image(monkeypatch):
    """The CUDA version and compat folder the runtime asks for are what config.yaml installs."""
    from pathlib import Path

    import yaml

    from orpheus_tts import runtime
    from speech_common import cuda_driver

    seen = {}
    monkeypatch.setattr(
        cuda_driver, "ensure_cuda_driver", lambda required, what, **kw: seen.update(kw, r=required)
    )
    runtime.check_cuda_driver()
    assert seen["r"] == runtime.VLLM_CUDA_VERSION == 13000
    assert "580" in seen["fix"] and "cuda-compat-13-0" in seen["fix"]
    truss = Path(__file__).resolve().parents[1] / "orpheus_tts_truss"
    for name in ("config.yaml", "config_http.yaml"):
        commands = " ".join(yaml.safe_load((truss / name).read_text())["build_commands"])
        assert "cuda-compat-13-0" in commands, name
        for folder in seen["compat_dirs"]:
            assert f"{folder}/libcuda.so.1" in commands, name
