"""Every ```python block of the README and of the guides in docs/ runs as written, on its own."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks():
    for path in DOCUMENTS:
        for index, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S)):
            yield pytest.param(path, block, id=f"{path.relative_to(ROOT)}[{index}]")


@pytest.mark.training_smoke
@pytest.mark.parametrize("path, block", list(_blocks()))
def test_code_block_runs_on_its_own(path, block, tmp_path, monkeypatch):
    # Each block is user code in a fresh namespace, under JAX's default (standard) dtype
    # promotion: it must import what it uses. Files it writes land in a temporary folder.
    monkeypatch.chdir(tmp_path)
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(block, str(path), "exec"), {"__name__": "__doc_block__"})  # noqa: S102


@pytest.mark.training_smoke
def test_readme_tour_prints_the_worked_example(capsys):
    first = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    exec(compile(first, "README.md", "exec"), {})  # noqa: S102
    assert "0.3567" in capsys.readouterr().out


# The languages a fence may name: python blocks run above, sh/bash blocks run at --smoke in
# tests/test_docs.py (or say why not), text blocks are output. Any other tag (```py,
# ```python3, none) would be a block that silently never runs.
FENCE_LANGUAGES = {"python", "sh", "bash", "text"}


@pytest.mark.docs
def test_every_code_block_names_a_language_that_is_checked():
    problems = []
    for path in DOCUMENTS:
        inside = False
        for number, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"\s*```(.*)$", line)
            if not m:
                continue
            if not inside and m.group(1).strip() not in FENCE_LANGUAGES:
                problems.append(f"{path.relative_to(ROOT)}:{number}: ```{m.group(1)}")
            inside = not inside
    assert not inside
    assert not problems, "fences with no checked language:\n" + "\n".join(problems)
