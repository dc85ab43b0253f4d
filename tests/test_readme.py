"""The README's examples run as written.

Every ```python block that follows a ``<!-- readme-example -->`` line is run as a script
in a fresh interpreter (in a temporary directory). It must exit with status 0, and each
``# <expected>`` comment on a ``print(...)`` line must appear in its output, as the
README promises.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- readme-example -->"
_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
_PRINT_EXPECTED = re.compile(r"^\s*print\(.*\)\s+#\s*(?P<expected>.+?)\s*$")


def readme_examples() -> list[str]:
    """The code of each python block that directly follows the marker line."""
    text = README.read_text()
    examples = []
    for part in text.split(MARKER)[1:]:
        match = _BLOCK.match(part.lstrip("\n"))
        assert match is not None, f"{MARKER} is not followed by a ```python block"
        examples.append(match.group(1))
    return examples


def expected_outputs(code: str) -> list[str]:
    """The values the README shows as trailing comments on print lines."""
    return [m.group("expected") for line in code.splitlines() if (m := _PRINT_EXPECTED.match(line))]


def run_example(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in ``directory`` with a fresh interpreter."""
    script = directory / "example.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )


EXAMPLES = readme_examples()


def test_readme_has_examples_to_run():
    """The README marks its classic examples (at least the five the issue names)."""
    assert len(EXAMPLES) >= 5
    assert all(expected_outputs(code) for code in EXAMPLES[1:])


def test_expected_outputs_reads_trailing_print_comments():
    """The helper takes the comment of a print line, and ignores other comments."""
    code = 'x = f(1)  # not this\nprint(x)        # 42\nprint("a")\n'
    assert expected_outputs(code) == ["42"]


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example-{i + 1}" for i in range(len(EXAMPLES))])
def test_readme_example_runs_and_prints_what_it_shows(code, tmp_path):
    """The example exits with 0 and prints every value its comments promise."""
    result = run_example(code, tmp_path)
    assert result.returncode == 0, result.stderr
    for expected in expected_outputs(code):
        assert expected in result.stdout, (expected, result.stdout, result.stderr)


def test_readme_fire_and_forget_example_output_appears_before_exit(tmp_path):
    """The Task.start example's task runs to its end: the program's exit waits for it."""
    (code,) = [c for c in EXAMPLES if "Task.start(" in c]
    result = run_example(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "visited /home" in result.stdout
