"""The project installs as a package (``make``: ``pip install -e .``): every console command in
pyproject.toml points at a real ``main``, and the tooling does not edit ``sys.path``."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYS_PATH_EDITS_ALLOWED: set[str] = set()  # serve.py re-executes itself with the image's path


def test_console_commands_point_at_main_functions() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    commands = project["scripts"]
    assert len(commands) >= 10
    for name, target in commands.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_no_file_edits_sys_path() -> None:
    edits = {
        str(path.relative_to(REPO))
        for base in ("scripts", "shared", "tests", "whisper_streaming_truss", "orpheus_tts_truss")
        for path in (REPO / base).rglob("*.py")
        if re.search(r"sys\.path(\.insert|\.append|\[[^\]]*\]\s*=)", path.read_text())
        and path.name != "test_packaging.py"
    }
    assert edits <= SYS_PATH_EDITS_ALLOWED, edits


def test_tooling_is_organised_by_trade_and_every_package_installs() -> None:
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    trades = {"clients", "local", "bench", "deploy"}
    flat = {p.name for p in (REPO / "scripts").glob("*.py")} - {"__init__.py"}
    assert not flat, f"scripts/ holds only its trades' packages: {sorted(flat)}"
    found = {p.parent.name for p in (REPO / "scripts").glob("*/__init__.py")}
    assert found == trades
    assert {f"scripts.{t}" for t in trades} | {"scripts"} <= listed
    for target in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "scripts"
    ].values():
        assert target.split(".")[1] in trades, target


def _module_constants() -> dict[tuple[str, str], list[str]]:
    """UPPER_CASE module-level constants with a literal value, by (name, value)."""
    import ast
    from collections import defaultdict

    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for base in ("scripts", "shared", "whisper_streaming_truss", "orpheus_tts_truss"):
        for path in (REPO / base).rglob("*.py"):
            for node in ast.parse(path.read_text()).body:
                if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue  # computed or imported: defined elsewhere
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.isupper():
                        found[(target.id, repr(value))].append(str(path.relative_to(REPO)))
    return found


def test_no_two_modules_define_the_same_constant() -> None:
    constants = _module_constants()
    twins = {key: paths for key, paths in constants.items() if len(paths) > 1}
    assert not twins, twins
    strings: dict[str, set[str]] = {}
    for (_name, value), paths in constants.items():
        if value.startswith(("'", '"')) and len(value) > 7:  # a real word, not "" or "en"
            strings.setdefault(value, set()).update(paths)
    assert not {v: p for v, p in strings.items() if len(p) > 1}
