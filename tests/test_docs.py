"""The README and docs/ state things the code can contradict: links, paths, make targets, close
codes, error types and protocol keys are checked here (docs/tts.md's message tables against the
schema: tests/test_orpheus_schema.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from speech_common.ws import CloseCode

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_BYTES = 8 * 1024
CODE_DIRS = [REPO / "shared", REPO / "whisper_streaming_truss", REPO / "orpheus_tts_truss"]


def test_the_readme_fits_on_a_screen_or_two() -> None:
    assert len((REPO / "README.md").read_bytes()) < README_MAX_BYTES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_and_paths_exist(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (page.parent / target).exists(), f"{page.name}: dead link {target}"
    # Backticked repository paths ("shared/speech_common/text_buffer.py", "scripts/deploy/promote.py").
    for path in re.findall(
        r"`((?:shared|scripts|tests|docs|samples|[a-z_]+_truss)/[\w/.-]+)`", text
    ):
        clean = path.split(":")[0].rstrip("/")
        if "<" in clean or "*" in clean or "{" in clean:
            continue
        assert (REPO / clean).exists(), f"{page.name}: no such path {path}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_make_targets_exist(page: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    for target in re.findall(r"`make ([\w-]+)", page.read_text()):
        assert target in targets, f"{page.name}: make {target} is not a target"


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
