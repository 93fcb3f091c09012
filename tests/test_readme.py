"""The README's Python examples run as written (lucidrains' test_readme idea)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


def test_readme_commands_exist():
    text = README.read_text()
    root = README.parent
    for script in re.findall(r"bash (scripts/\w+\.sh)", text):
        assert (root / script).is_file(), script
    assert "bash scripts/test.sh" in (root / ".ci" / "run").read_text()
