"""The README and docs/ state things the code can contradict: links, paths, make targets,
commands and their flags, settings defaults, close codes, error types, encodings and protocol
keys are checked here (docs/tts.md's message tables against the schema:
tests/test_orpheus_schema.py)."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from speech_common.ws import CloseCode

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Pages whose paths and commands are not checked yet: docs/benchmarks.md names scripts that no
# longer exist (bench_tts.py, bench_stt.py). Its owner fixes it; then it joins the others.
README_MAX_BYTES = 8 * 1024
CODE_DIRS = [REPO / "shared", REPO / "whisper_streaming_truss", REPO / "orpheus_tts_truss"]

# Where a written path may start besides the repository root: the packages, named as the docs
# name them (`whisper_streaming/schema.py`, `speech_common/driver.py`, `orpheus_tts/dialects/`).
PACKAGE_DIRS = {
    "speech_common": REPO / "shared" / "speech_common",
    "whisper_streaming": REPO / "whisper_streaming_truss" / "packages" / "whisper_streaming",
    "orpheus_tts": REPO / "orpheus_tts_truss" / "packages" / "orpheus_tts",
}
# Made by a command, never committed: venvs, build folders, outputs, the image's build context.
GENERATED = {
    ".venv",
    ".venv-clients",
    ".truss_build",
    ".gpu_wheels",
    ".gpu_site",
    ".git",
    "bench_results",
    "requirements.txt",  # of a truss's image build context (truss image build-context)
    "constraints.txt",
}
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".json", ".wav", ".toml", ".txt", ".onnx")


def test_the_readme_fits_on_a_screen_or_two() -> None:
    assert len((REPO / "README.md").read_bytes()) < README_MAX_BYTES


# -- paths -------------------------------------------------------------------------------------
def _repo_files() -> list[str]:
    """Every file of the repository (not what commands make), as a path from its root."""
    files = []
    for root, dirs, names in os.walk(REPO):
        dirs[:] = [
            d
            for d in dirs
            if d not in GENERATED
            and d != "__pycache__"
            and d not in {".pytest_cache", ".ruff_cache", ".hypothesis"}
        ]
        rel = Path(root).relative_to(REPO)
        files += [(rel / n).as_posix() for n in names]
    return files


REPO_FILES = _repo_files()


def _fences(text: str) -> tuple[str, list[str]]:
    """The page without its fenced code blocks, and the blocks (continued lines joined)."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return prose, [block.replace("\\\n", " ") for block in blocks]


def _expand_braces(word: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", word)
    if not match:
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    return [w for part in match.group(1).split(",") for w in _expand_braces(head + part + tail)]


def _clean(word: str) -> str:
    word = re.split(r"::|#", word.strip("\"'(),;:[]"))[0]
    return re.sub(r":\d+$", "", word).rstrip(".")


def _is_placeholder(word: str) -> bool:
    return bool(re.search(r"[<>…*$=~]|://", word)) or word.startswith(("/", "-"))


def path_problem(word: str, *, bare_names: bool) -> str | None:
    """Why ``word`` is not a path of this repository (None: it is one, or it is no path).

    A path from the repository root or from a package (`whisper_streaming/schema.py`) must
    exist; a file name with a path-less start (`tts_client.py`, `model/model.py`) must end some
    file's path (only where ``bare_names``: prose and tables, not code, where `--out hello.wav`
    names the user's file). Placeholders (`<truss>/…`), URLs and made-by-commands paths pass."""
    word = _clean(word)
    if not word or _is_placeholder(word):
        return None
    first = word.split("/")[0]
    if first in GENERATED:
        return None
    if first == "..":  # a config value, relative to a truss (`external_package_dirs: [../shared]`)
        target = REPO / "whisper_streaming_truss" / word
    elif "/" in word and first in PACKAGE_DIRS:
        target = PACKAGE_DIRS[first].parent / word
    elif "/" in word and (REPO / first).exists() and first not in ("", "."):
        target = REPO / word
    elif bare_names and word.endswith(FILE_SUFFIXES):
        tail = word.rstrip("/")
        if any(f == tail or f.endswith("/" + tail) for f in REPO_FILES):
            return None
        return f"no file of the repository is called {word}"
    else:
        return None  # a model id, an API path, a word with a slash
    return None if target.exists() else f"no such path {word}"


def _page_words(text: str) -> Iterator[tuple[str, bool]]:
    """(word, bare names checked) for every word of every backticked span and code block."""
    prose, blocks = _fences(text)
    for span in re.findall(r"`([^`\n]+)`", prose):
        for word in span.split():
            for expanded in _expand_braces(word):
                yield expanded, True
    for block in blocks:
        for word in block.split():
            for expanded in _expand_braces(word):
                yield expanded, False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_exist(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if not target.startswith("http"):
            assert (page.parent / target).exists(), f"{page.name}: dead link {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_paths_exist(page: Path) -> None:
    """Every repository path a page writes in backticks or code (`scripts/bench/stt.py`,
    `whisper_streaming/schema.py`, `config_http.yaml`, `tests/x.py::test_y`) exists."""
    text = page.read_text()
    problems = sorted(
        {p for word, bare in _page_words(text) if (p := path_problem(word, bare_names=bare))}
    )
    for test_id in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text):
        path, name = test_id
        if f"def {name}(" not in (REPO / path).read_text():
            problems.append(f"{path} has no test {name}")
    assert not problems, f"{page.name}: {problems}"


def test_the_path_check_fails_on_false_paths() -> None:
    for word in ("tts_client.py", "scripts/bench/bench_stt.py", "whisper_streaming/wav.py",
                 "scripts/clients/wav.py", "model/nothing.py", "shared/nothing/"):  # fmt: skip
        assert path_problem(word, bare_names=True), word
    for word in ("config_http.yaml", "model/model.py", "orpheus_tts/dialects/", "<truss>/slo.yaml",
                 "canopylabs/orpheus-3b-0.1-ft", "/app/weights/snac", ".venv/bin/python",
                 "tests/test_docs.py::test_paths_exist", "scripts/local/serve.py:12"):  # fmt: skip
        assert path_problem(word, bare_names=True) is None, word
    assert path_problem("hello.wav", bare_names=False) is None


def _layout_entries(text: str) -> Iterator[tuple[Path, str]]:
    """development.md's layout block: (the folder a line describes, each file word on it)."""
    block = text[text.index("## Layout") :]
    block = block[block.index("```") : block.index("```", block.index("```") + 3)]
    top = current = REPO
    for line in block.splitlines()[1:]:
        words = line.split()
        if not words:
            continue
        if not line.startswith(" ") and words[0].endswith("/"):
            top = current = REPO / words[0]
            yield REPO, words.pop(0)
        elif line.startswith("  ") and not line.startswith("   ") and words[0].endswith("/"):
            current = top / words[0]
            yield top, words.pop(0)
        elif not line.startswith(" "):
            top = current = REPO
        for word in words:
            yield current, word


def layout_problems(text: str) -> list[str]:
    """Each file the layout names exists in the folder its line describes (`clients/ ... wav.py`
    is scripts/clients/wav.py), or, for a path, from the repository root."""
    problems = []
    for folder, raw in _layout_entries(text):
        for word in _expand_braces(_clean(raw)):
            first = word.split("/")[0]
            is_path = (
                word.endswith(FILE_SUFFIXES)
                or word.endswith("/")
                or ("/" in word and ((folder / first).is_dir() or (REPO / first).is_dir()))
            )
            if not is_path or _is_placeholder(word):
                continue
            if not ((folder / word).exists() or (REPO / word).exists() or list(folder.glob(word))):
                problems.append(f"{folder.relative_to(REPO)}: {word}")
    return problems


def test_the_layout_lists_files_that_exist() -> None:
    text = (REPO / "docs" / "development.md").read_text()
    assert not layout_problems(text)
    wrong = text.replace("auth.py (the Api-Key rule)", "auth.py (the Api-Key rule) wav.py", 1)
    wrong = wrong.replace("engine.py scheduler.py", "engine.py vad.py scheduler.py", 1)
    assert wrong.count("wav.py") == 1 and "engine.py vad.py" in wrong
    assert layout_problems(wrong) == [
        "whisper_streaming_truss/packages/whisper_streaming: vad.py",
        "scripts/clients: wav.py",
    ]


# -- make targets, commands and their flags ------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_make_targets_exist(page: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    text = page.read_text()
    _, blocks = _fences(text)
    mentioned = re.findall(r"`make ([\w-]+)", text)
    mentioned += [t for block in blocks for t in re.findall(r"^make ([\w-]+)", block, re.M)]
    for target in mentioned:
        assert target in targets, f"{page.name}: make {target} is not a target"


def _console_scripts() -> dict[str, Path]:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {
        name: REPO / (target.split(":")[0].replace(".", "/") + ".py")
        for name, target in scripts.items()
    }


def _commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(script or console command, the words after it) of every command line a page shows."""
    prose, blocks = _fences(text)
    lines = re.findall(r"`([^`\n]+)`", prose)
    lines += [line.split(" #")[0] for block in blocks for line in block.splitlines()]
    commands = _console_scripts()
    for line in lines:
        words = line.split()
        for i, word in enumerate(words):
            if re.fullmatch(r"scripts/[\w/]+\.py", word) or (i == 0 and word in commands):
                yield word, words[i + 1 :]
                break


def _with_shared_options(source: str) -> str:
    """A script's source and that of the scripts modules it imports options from
    (``from scripts.bench.stt import add_session_options``)."""
    for module in re.findall(r"^from (scripts(?:\.\w+)+) import", source, re.MULTILINE):
        path = REPO / (module.replace(".", "/") + ".py")
        if path.exists():
            source += path.read_text()
    return source


def command_problems(text: str) -> list[str]:
    """`scripts/clients/tts.py --events --format mp3`, `speech-make-samples --words-only`: the
    script (or console command) exists and takes every flag shown."""
    console = _console_scripts()
    problems = []
    for command, args in _commands(text):
        script = console.get(command, REPO / command)
        if not script.exists():
            problems.append(f"no script {command}")
            continue
        source = _with_shared_options(script.read_text())
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", " ".join(args)):
            if f'"{flag}"' not in source:
                problems.append(f"{command} has no {flag}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_and_their_flags_exist(page: Path) -> None:
    assert not command_problems(page.read_text()), page.name


def test_the_command_check_fails_on_wrong_commands() -> None:
    text = """`scripts/clients/tts.py --events --speed 2` and `speech-make-samples --words`:

```bash
.venv/bin/python scripts/bench/bench_stt.py --url ws://x
.venv/bin/python scripts/deploy/promote.py --model-id m \\
    --rollback   # a comment --not-a-flag
```
"""
    assert command_problems(text) == [
        "scripts/clients/tts.py has no --speed",
        "speech-make-samples has no --words",
        "no script scripts/bench/bench_stt.py",
        "scripts/deploy/promote.py has no --rollback",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_console_commands_exist(page: Path) -> None:
    commands = _console_scripts()
    for span in re.findall(r"`((?:speech|stt|tts|bench)-[\w-]+)", page.read_text()):
        assert span in commands, f"{page.name}: {span} is not in pyproject's [project.scripts]"


def _code_strings() -> str:
    return "\n".join(p.read_text() for d in CODE_DIRS for p in d.rglob("*.py"))


def test_tts_error_table_matches_the_code() -> None:
    text = (REPO / "docs" / "tts.md").read_text()
    section = text[text.index("## Errors") : text.index("\n## ", text.index("## Errors") + 1)]
    code = _code_strings()
    rows = re.findall(r"^\| `(\w+)` \|.*\| (\d{4}) \|$", section, re.MULTILINE)
    assert len(rows) >= 8
    for error_type, close in rows:
        assert f'"{error_type}"' in code, f"error_type {error_type} is raised nowhere"
        assert int(close) in {c.value for c in CloseCode}


def test_stt_errors_and_keys_match_the_code() -> None:
    from whisper_streaming.schema import StreamingParams, VadParams, WhisperParams

    text = (REPO / "docs" / "stt.md").read_text()
    code = _code_strings()
    errors = text[text.index("5. Errors") : text.index("Metadata keys")]
    for error_type in re.findall(r"`([a-z_]+)`", errors):
        if error_type not in ("error_type", "message", "recoverable", "retry_after_s",
                              "transcription_num"):  # fmt: skip
            assert f'"{error_type}"' in code, f"error_type {error_type} is raised nowhere"
    for code_value in re.findall(r"\b(1\d{3})\b", errors):
        assert int(code_value) in {c.value for c in CloseCode} | {1007}  # 1007: the WS layer's
    for model in (VadParams, StreamingParams, WhisperParams):
        for name in model.model_fields:
            assert f"`{name}`" in text, f"docs/stt.md does not mention {name}"


# -- settings tables: each default the docs state is what the deployment runs with -------------
# A table's "default" is what the truss's configs deploy: the typed settings model's default,
# overridden by config.yaml's model_metadata (and config_http.yaml's, which must agree). Where
# the model's own default differs, the row says "model default of `key`: value".
SETTINGS_TABLES = {
    "stt.md": ("## Settings", "whisper_streaming_truss", ("config.yaml", "config_http.yaml")),
    "tts.md": ("## Configuration", "orpheus_tts_truss", ("config.yaml", "config_http.yaml")),
}


def _settings_model(truss: str) -> Any:
    if truss == "whisper_streaming_truss":
        from whisper_streaming.settings import WhisperSettings

        return WhisperSettings
    from orpheus_tts.settings import OrpheusSettings

    return OrpheusSettings


def _literal(text: str) -> Any:
    """A value as a table writes it: 64, 0.85, `true`, `vllm`, `""`, `[]`, none."""
    text = text.strip()
    if text.startswith("`") and text.endswith("`"):
        inner = text[1:-1]
        if inner in ("true", "false"):
            return inner == "true"
        return {'""': "", "[]": []}.get(inner, inner)
    if text in ("true", "false"):
        return text == "true"
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # prose: never equal to a typed default


def _same(stated: Any, actual: Any) -> bool:
    if isinstance(actual, bool) or isinstance(stated, bool):
        return stated is actual
    if isinstance(actual, int | float) and isinstance(stated, int | float):
        return float(stated) == float(actual)
    return stated == actual


def settings_rows(text: str, heading: str) -> list[tuple[str, Any, str]]:
    """(key, stated default, the row) of the first table under ``heading``."""
    section = text[text.index(heading) :]
    end = section.find("\n## ")
    section = section if end == -1 else section[:end]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`(\w+)`", cells[0])
        values = cells[1].split(" / ")
        assert len(keys) == len(values), f"{line}: {len(keys)} keys, {len(values)} defaults"
        rows += [(key, _literal(value), line) for key, value in zip(keys, values, strict=True)]
    return rows


def deployed_settings(truss: str, config: str) -> dict[str, Any]:
    metadata = yaml.safe_load((REPO / truss / config).read_text()).get("model_metadata") or {}
    return _settings_model(truss).from_metadata(metadata, environ={}).model_dump()


def settings_problems(page: str, text: str) -> list[str]:
    heading, truss, configs = SETTINGS_TABLES[page]
    model = _settings_model(truss)
    typed = {name: field.default for name, field in model.model_fields.items()}
    deployed = [deployed_settings(truss, config) for config in configs]
    rows = settings_rows(text, heading)
    problems = []
    documented = [key for key, _, _ in rows]
    problems += [f"{k} is no setting" for k in documented if k not in typed]
    problems += [f"{k} is not in the table" for k in typed if k not in documented]
    for key, stated, line in rows:
        if key not in typed:
            continue
        for config, values in zip(configs, deployed, strict=True):
            if not _same(stated, values[key]):
                problems.append(f"{key}: the docs say {stated!r}, {config} deploys {values[key]!r}")
        note = re.search(rf"model default of `{key}`: ([^;)|]+)", line)
        if note and not _same(_literal(note.group(1)), typed[key]):
            problems.append(f"{key}: the docs give the model default {note.group(1)}")
        if not note and not _same(deployed[0][key], typed[key]):
            problems.append(f"{key}: the model's default {typed[key]!r} is not given")
    return problems


@pytest.mark.parametrize("page", sorted(SETTINGS_TABLES))
def test_settings_tables_state_the_deployed_defaults(page: str) -> None:
    """Every model_metadata key is in its truss's table, with the default it deploys with."""
    assert not settings_problems(page, (REPO / "docs" / page).read_text())


def test_the_settings_check_fails_on_a_wrong_default() -> None:
    text = (REPO / "docs" / "tts.md").read_text()
    assert not settings_problems("tts.md", text)
    wrong = text.replace("| 4096 / 0.85 / 64 / `true` |", "| 4096 / 0.9 / 64 / `true` |")
    assert wrong != text
    assert settings_problems("tts.md", wrong) == [
        "gpu_memory_utilization: the docs say 0.9, config.yaml deploys 0.85",
        "gpu_memory_utilization: the docs say 0.9, config_http.yaml deploys 0.85",
    ]
    unnoted = text.replace(" (model default of `snac_max_batch`: 16)", "")
    assert unnoted != text
    assert settings_problems("tts.md", unnoted) == [
        "snac_max_batch: the model's default 16 is not given"
    ]
    stt = (REPO / "docs" / "stt.md").read_text()
    missing = stt.replace("| `stream_head_ms` | 500 |", "| `stream_head` | 500 |")
    assert missing != stt
    assert set(settings_problems("stt.md", missing)) == {
        "stream_head is no setting",
        "stream_head_ms is not in the table",
    }


# -- the STT session's metadata: stated defaults and encodings -----------------------------------
def stt_metadata_problems(text: str) -> list[str]:
    from whisper_streaming.schema import StreamingParams, VadParams, WhisperParams

    defaults = {
        name: field.get_default(call_default_factory=True)
        for model in (VadParams, StreamingParams, WhisperParams)
        for name, field in model.model_fields.items()
    }
    table = text[text.index("Metadata keys") : text.index("## How it works")]
    problems = []
    for key, value in re.findall(r"`(\w+)` \(([^;:,)]+)", table):
        if key in defaults and not _same(_literal(value), defaults[key]):
            problems.append(
                f"{key}: the docs say ({value}), the schema's default is {defaults[key]!r}"
            )
    return problems


def test_stt_metadata_defaults_match_the_schema() -> None:
    text = (REPO / "docs" / "stt.md").read_text()
    assert not stt_metadata_problems(text)
    assert stt_metadata_problems(text.replace("`beam_width` (none", "`beam_width` (1")) == [
        "beam_width: the docs say (1), the schema's default is None"
    ]


def test_stt_encodings_the_docs_list_are_the_decoders() -> None:
    """README's and docs/stt.md's STT input encodings are exactly what the session decodes."""
    from speech_common.audio import Encoding

    readme = (REPO / "README.md").read_text()
    readme = readme[readme.index("## What the STT truss") : readme.index("## What the TTS truss")]
    stt = (REPO / "docs" / "stt.md").read_text()
    stt = stt[stt.index("2. Binary frames") : stt.index("3. Control frames")]
    for name, section in (("README.md", readme), ("stt.md", stt)):
        listed = set(re.findall(r"`(pcm_\w+)`", section))
        assert listed == {e.value for e in Encoding}, f"{name} lists {sorted(listed)}"
