"""The README guides: short, the two set-up commands first, links that resolve, snippets that parse."""

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    """The README's fenced code blocks whose fence names `language` ("" for a bare fence)."""
    blocks, current, fence = [], [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, current = line[3:].strip(), []
            else:
                if fence == language:
                    blocks.append("\n".join(current) + "\n")
                fence = None
        elif fence is not None:
            current.append(line)
    return blocks


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) < 200
    first_block = _blocks("")[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    assert README.index("make demo") < 400  # on the first screen


def test_every_linked_file_exists():
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_python_snippets_compile():
    snippets = _blocks("python")
    assert snippets
    for snippet in snippets:
        compile(snippet, "README.md", "exec")


def test_dream_commands_parse():
    """Every `dream ...` line of the README is accepted by the parser (flags and values as the CLI has them)."""
    from dreamy.cli.parser import build_parser

    commands = [line for block in _blocks("") for line in block.splitlines() if line.startswith("dream ")]
    assert commands
    for command in commands:
        words = [w for w in shlex.split(command, comments=True)[1:] if not (w.startswith("[") or w.endswith("]"))]
        words = [w.split("|")[0] for w in words]
        if words[0] == "sites":
            continue
        try:
            build_parser().parse_args(words)
        except SystemExit as error:  # pragma: no cover - a failure names the command
            pytest.fail(f"{command}: exit {error.code}")
