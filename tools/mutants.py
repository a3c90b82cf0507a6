"""Mutation testing of the core modules: ``make mutants`` (on demand, never in CI).

    python -m tools.mutants [--label before] [--modules losses,masks,...]
        [--sample 40] [--sample-all N] [--seed 2024] [--stop-at HH:MM] [--fresh]
        [--report reports/mutants.md]
    python -m tools.mutants --report-only [--label before] [--modules ...]

What it does:

* Mutants come from cosmic-ray (all of its default operators): every mutant of
  ``jaxseq/losses.py`` and ``jaxseq/masks.py``, and a seeded random sample of
  ``--sample`` mutants each of ``jaxseq/recurrence.py`` and ``jaxseq/_fused.py``
  (the sampled mutants are drawn from the full list sorted by operator and
  occurrence, so a seed names the same sample on every machine).
* A time-bounded run: ``--sample-all N`` samples N valid mutants (same seed) of
  ``losses.py`` and ``masks.py`` too, and the report says so (sample size and seed);
  ``--modules`` sets which modules run and in which order (cheapest first, say);
  ``--stop-at HH:MM`` (UTC) starts no mutant after that time, leaving the rest
  pending, and the section says PARTIAL with what has a result. The default
  (``make mutants``) is unchanged: every mutant of losses and masks.
* Tests per module: only the test files that exercise the module (``TARGETS``).
  One coverage run of those files (the unmutated baseline), with JAX's caches
  cleared before each test, records which tests execute each statement; a
  mutant then runs only the tests that execute its statement (all of the
  module's tests for a statement that runs at import), file by file in
  ``TARGETS`` order, stopping at the first failure (``-x``), in one process per
  file, under a timeout of 60 s + 3x those tests' coverage-run time. A mutant
  of a statement no test executes survives untested, listed as "not covered".
* Speed: the runner imports JAX, PyTorch, pytest and the rest once and forks a
  child per mutant (jaxseq itself and the tests are imported fresh in each
  child, after the mutation is written to disk); JAX's backend is never started
  in the parent, so the fork is safe. It lowers its own priority to nice 19.
* Results live in a cosmic-ray session database per module under
  ``reports/mutants-work/<label>/`` (``cr-report`` reads it), so an interrupted
  run resumes where it stopped when started again with the same label; a module
  whose source changed starts over. The labelled section of ``--report``
  (``## Before`` for ``--label before``) is rewritten after each module.

Score = (killed + timeout) / mutants run. A surviving mutant is either a test gap
(write the test that kills it) or an equivalent mutant (explain it in the report).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import difflib
import hashlib
import importlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import pytest

SEED = 2024
SAMPLE = 40

# Module -> the test paths that exercise it (a module's own path: its doctests), cheap
# imports first: a mutant runs them in this order and stops at the first that fails.
TARGETS = {
    "jaxseq/losses.py": (
        "jaxseq/losses.py",
        "tests/test_mutant_kills.py",
        "tests/test_losses.py",
        "tests/test_loss_hardening.py",
        "tests/test_chunked.py",
        "tests/test_properties.py",
    ),
    "jaxseq/masks.py": (
        "jaxseq/masks.py",
        "tests/test_mutant_kills.py",
        "tests/test_masks.py",
        "tests/test_properties.py",
        "tests/test_recurrence.py",
        "tests/test_padding_poison.py",
    ),
    "jaxseq/recurrence.py": (
        "jaxseq/recurrence.py",
        "tests/test_recurrence.py",
        "tests/test_fused.py",
        "tests/test_padding_poison.py",
    ),
    "jaxseq/_fused.py": (
        "jaxseq/_fused.py",
        "tests/test_fused.py",
        "tests/test_grad_oracle_fused.py",
        "tests/test_recurrence.py",
        "tests/test_padding_poison.py",
    ),
}
# (A test path that does not exist in the checkout, e.g. a file added later than the
# commit under test, is left out of the module's test set; the report lists the sets.)
SAMPLED = ("jaxseq/recurrence.py", "jaxseq/_fused.py")

# hypothesis is imported before pytest starts (see PREIMPORT), so pytest cannot rewrite the
# asserts of its plugin module: that warning (an error under the suite's filters) is ignored.
PYTEST_ARGS = [
    "-q",
    "-x",
    "-n",
    "0",
    "-p",
    "no:cacheprovider",
    "-m",
    "not slow",
    "--tb=short",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
]

# Imported once in the parent; none of them may start JAX's backend.
PREIMPORT = (
    "numpy",
    "scipy.special",
    "jax",
    "jax.numpy",
    "jax.test_util",
    "chex",
    "optax",
    "flax",
    "hypothesis",
    "pytest",
    "coverage",
    "torch",
)

WORKDIR = Path("reports/mutants-work")
REPORT = Path("reports/mutants.md")
MARKER = "mutating.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def say(*parts) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------ forked pytest runs


def _preimport(xla_cache: Path) -> None:
    for name in PREIMPORT:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import jax
    from jax._src import xla_bridge

    # XLA's persistent compilation cache: a mutant's child compiles again only the
    # programs its mutation changed (5x faster test runs); jax.clear_caches keeps it.
    jax.config.update("jax_compilation_cache_dir", str(xla_cache.resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", 4 * 2**30)

    if xla_bridge.backends_are_initialized():
        raise SystemExit("tools.mutants: a pre-imported module started JAX's backend")


def _run_forked(fn, log: Path, timeout: float) -> tuple[str, int | None, float]:
    """Run ``fn() -> int`` in a forked child; returns (status, exit code, seconds).

    status is "exit", "timeout" or "signal"; the child's output goes to ``log``.
    """
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = int(fn())
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                seconds = time.monotonic() - start
                if os.WIFEXITED(status):
                    return "exit", os.WEXITSTATUS(status), seconds
                return "signal", -os.WTERMSIG(status), seconds
            if time.monotonic() - start > timeout:
                _kill(pid)
                return "timeout", None, time.monotonic() - start
            time.sleep(0.05)
    except BaseException:
        _kill(pid)
        raise


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class _CoveragePlugin:
    """Per-test coverage contexts, fresh JAX (and jaxseq functools) caches per test."""

    def __init__(self, cov):
        self.cov = cov
        self.order: list[str] = []
        self.durations: dict[str, float] = {}
        self.failed: list[str] = []

    def _clear_caches(self) -> None:
        import jax

        jax.clear_caches()
        for name, module in list(sys.modules.items()):
            if name == "jaxseq" or name.startswith("jaxseq."):
                for value in list(vars(module).values()):
                    if callable(getattr(value, "cache_clear", None)) and hasattr(
                        value, "cache_info"
                    ):
                        value.cache_clear()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.order.append(item.nodeid)
        self._clear_caches()
        self.cov.switch_context(item.nodeid)
        try:
            return (yield)
        finally:
            self.cov.switch_context("")

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.failed.append(report.nodeid)


def _coverage_key() -> str:
    """Changes when the code or the tests change (then the coverage map is redone)."""
    files = sorted(set(TARGETS) | {"conftest.py", "pyproject.toml"})
    files += sorted(str(p) for p in Path("tests").glob("*.py"))
    text = "".join(f"{f}:{sha256(Path(f))}" for f in files if Path(f).exists())
    return hashlib.sha256(text.encode()).hexdigest()


def coverage_map(module: str, workdir: Path) -> dict:
    """Lines of the target modules -> the tests that run them, the test order, durations.

    One coverage run (the unmutated baseline) of the module's test paths not covered yet;
    the map is kept in the work dir and grows module by module.
    """
    import coverage

    cache = workdir / "coverage-map.json"
    key = _coverage_key()
    cmap = json.loads(cache.read_text()) if cache.exists() else {}
    if cmap.get("key") != key:
        empty = {m: {} for m in TARGETS}
        cmap = {"key": key, "paths": [], "order": [], "durations": {}, "lines": empty}
        cmap["seconds"] = {}
    paths = [p for p in TARGETS[module] if p not in cmap["paths"]]
    if not paths:
        return cmap
    data_file = workdir / "coverage.sqlite"
    result_file = workdir / "coverage-run.json"
    for stale in (data_file, result_file):
        stale.unlink(missing_ok=True)
    say(f"coverage run (the unmutated baseline) of {' '.join(paths)}")

    def child() -> int:
        cov = coverage.Coverage(
            data_file=str(data_file),
            include=[str(Path(m).resolve()) for m in TARGETS],
            config_file=False,
        )
        plugin = _CoveragePlugin(cov)
        cov.start()
        try:
            code = pytest.main([*PYTEST_ARGS, *paths], plugins=[plugin])
        finally:
            cov.stop()
            cov.save()
        result = {"order": plugin.order, "durations": plugin.durations, "failed": plugin.failed}
        result_file.write_text(json.dumps(result))
        return int(code)

    log = workdir / "coverage-run.log"
    status, code, seconds = _run_forked(child, log, timeout=4 * 3600)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    if status != "exit" or code != 0:
        raise SystemExit(f"the unmutated tests fail ({status}, {code}); see {log}\n{tail}")
    run = json.loads(result_file.read_text())
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    for m in TARGETS:
        lines = cmap["lines"][m]
        for k, v in data.contexts_by_lineno(str(Path(m).resolve())).items():
            lines[str(k)] = sorted(set(lines.get(str(k), [])) | {c for c in v if c})
    cmap["paths"] += paths
    cmap["order"] += run["order"]
    cmap["durations"].update(run["durations"])
    cmap["seconds"][" ".join(paths)] = round(seconds, 1)
    cache.write_text(json.dumps(cmap))
    say(f"coverage run: {len(run['order'])} tests in {seconds:.0f} s")
    return cmap


def set_seconds(module: str, cmap: dict) -> float:
    """The module's whole test set: its tests' time in the coverage run."""
    prefixes = tuple(p + "::" for p in TARGETS[module])
    return sum(d for t, d in cmap["durations"].items() if t.startswith(prefixes))


def statement_spans(source: str) -> list[tuple[int, int, bool]]:
    """(first, last, at_import) lines of each statement (a compound one: its header only).

    at_import: the statement runs when the module is imported (module level, a class
    body, a top-level def's header with its defaults and decorators), not inside a call.
    """
    spans: list[tuple[int, int, bool]] = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt | ast.excepthandler):
                body = getattr(child, "body", None)
                first = min(
                    [child.lineno] + [d.lineno for d in getattr(child, "decorator_list", [])]
                )
                if isinstance(body, list) and body:
                    last = max(child.lineno, body[0].lineno - 1)
                else:
                    last = child.end_lineno
                spans.append((first, last, not in_function))
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, inner)

    visit(ast.parse(source), False)
    return spans


def select_tests(module: str, line: int, cmap: dict, spans: list[tuple[int, int, bool]]):
    """The tests to run for a mutant at ``line``: one list of node ids per test path.

    The tests that execute the mutated statement (all of the module's tests when it runs
    at import). The lists follow ``TARGETS`` (cheap imports first; each runs in its own
    child, so a mutant killed by an early one never imports the later test modules);
    within a list the tests keep the coverage run's order. Empty: no test executes it.
    """
    inside = [s for s in spans if s[0] <= line <= s[1]]
    covering: set[str] | None = None
    if inside:
        first, last, at_import = min(inside, key=lambda s: s[1] - s[0])
        if not at_import:
            covering = set()
            for ln in range(first, last + 1):
                covering.update(cmap["lines"][module].get(str(ln), ()))
    stages = []
    for path in TARGETS[module]:
        stage = [
            t
            for t in cmap["order"]
            if t.startswith(path + "::") and (covering is None or t in covering)
        ]
        if stage:
            stages.append(stage)
    return stages


def run_mutant(stages: list[list[str]], cmap: dict, log: Path):
    """Run the stages until one fails: (outcome, tests run, seconds, output tail).

    outcome is "killed", "timeout" or "survived".
    """
    ran, seconds = 0, 0.0
    for stage in stages:
        budget = 60.0 + 3.0 * sum(cmap["durations"].get(t, 1.0) for t in stage)
        args = [*PYTEST_ARGS, *stage]
        status, code, took = _run_forked(lambda args=args: pytest.main(args), log, budget)
        ran, seconds = ran + len(stage), seconds + took
        text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        if status == "timeout":
            return "timeout", ran, seconds, "timeout"
        if status == "signal":
            return "killed", ran, seconds, f"signal {-code}\n{text}"
        if code == 5:  # nothing collected: the test mapping is wrong
            raise SystemExit(f"no tests collected\n{text}")
        if code != 0:
            return "killed", ran, seconds, text
    return "survived", ran, seconds, text


# ------------------------------------------------------------------ sessions


def _db(path: Path, create: bool):
    from cosmic_ray.work_db import WorkDB, use_db

    return use_db(str(path), WorkDB.Mode.create if create else WorkDB.Mode.open)


def sample_size(module: str, sample: int, sample_all: int | None) -> int | None:
    """Mutants to draw for ``module``: None means every mutant."""
    if module in SAMPLED:
        return sample
    return sample_all


def prepare_session(module: str, workdir: Path, sample: int | None, seed: int, fresh: bool) -> dict:
    """Create (or reopen) the module's cosmic-ray session; returns its metadata.

    ``sample``: the number of valid mutants to draw (seeded), None for every mutant.
    """
    from cosmic_ray.commands.init import init
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    name = Path(module).stem
    db_path = workdir / f"{name}.sqlite"
    meta_path = workdir / f"{name}.json"
    wanted = {
        "module": module,
        "source_sha256": sha256(Path(module)),
        "sample": sample,
        "seed": seed if sample is not None else None,
    }
    if not fresh and db_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()):
            return meta
        say(f"{module}: source or sampling changed since the last run; starting over")
    db_path.unlink(missing_ok=True)
    with _db(db_path, create=True) as db:
        init([Path(module)], db, {})
        items = sorted(
            db.work_items,
            key=lambda w: (w.mutations[0].operator_name, w.mutations[0].occurrence),
        )
        total, invalid, annotations = len(items), None, None
        if sample is not None:
            # The sample is drawn from the mutants that are valid Python.
            source = Path(module).read_text()
            spans = annotation_spans(source)
            valid = [w for w in items if syntax_error(_mutate(source, w), module) is None]
            invalid = total - len(valid)
            valid = [w for w in valid if not in_annotation(w, spans)]
            annotations = total - invalid - len(valid)
            chosen = {w.job_id for w in random.Random(seed).sample(valid, min(sample, len(valid)))}
            skip = [w.job_id for w in items if w.job_id not in chosen]
            db.set_multiple_results(
                skip,
                WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output="not in the sample"),
            )
    meta = {**wanted, "total": total, "invalid": invalid, "annotations": annotations}
    meta.update(seconds=0.0, finished=None)
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def drop_bytecode(module: str) -> None:
    """Delete the module's cached bytecode, so an import compiles what is on disk now.

    (A .pyc is trusted when the source's size and mtime in whole seconds match, which two
    mutants written within one second can share.)
    """
    for cache in Path(module).parent.glob(f"__pycache__/{Path(module).stem}.*.pyc"):
        cache.unlink(missing_ok=True)


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (start, end) positions of the annotations that Python never evaluates.

    With ``from __future__ import annotations`` an annotation stays a string; a
    mutant inside one is equivalent by construction (nothing in jaxseq evaluates
    them). Without that import this is empty.
    """
    tree = ast.parse(source)
    lazy = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    if not lazy:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            found.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns:
            found.append(node.returns)
    return [((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)) for a in found]


def in_annotation(item, spans) -> bool:
    start = tuple(item.mutations[0].start_pos)
    return any(first <= start < last for first, last in spans)


def _mutate(source: str, item) -> str | None:
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    spec = item.mutations[0]
    return mutate_code(
        source, get_operator(spec.operator_name)(**spec.operator_args), spec.occurrence
    )


def syntax_error(code: str | None, filename: str) -> str | None:
    """The SyntaxError of a mutant that is not valid Python (None when it compiles)."""
    if code is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(code, filename, "exec")
        except SyntaxError as error:
            return f"{error.msg} (line {error.lineno})"
    return None


def _diff(original: str, mutated: str) -> str:
    return "\n".join(
        difflib.unified_diff(original.splitlines(), mutated.splitlines(), n=0, lineterm="")
    )


def past(deadline: datetime.datetime | None) -> bool:
    return deadline is not None and datetime.datetime.now(datetime.UTC) >= deadline


def run_session(
    module: str, workdir: Path, cmap: dict, meta: dict, deadline: datetime.datetime | None = None
) -> None:
    from cosmic_ray.mutating import use_mutation
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    name = Path(module).stem
    db_path = workdir / f"{name}.sqlite"
    meta_path = workdir / f"{name}.json"
    spans = statement_spans(Path(module).read_text())
    annotations = annotation_spans(Path(module).read_text())
    log = workdir / "mutant.log"
    with _db(db_path, create=False) as db:
        pending = sorted(db.pending_work_items, key=lambda w: tuple(w.mutations[0].start_pos))
        done = db.num_results
        total_run = done + len(pending)
        say(f"{module}: {len(pending)} mutants to run ({done} done or skipped)")
        for i, item in enumerate(pending, 1):
            if past(deadline):
                say(f"{module}: --stop-at reached; {len(pending) - i + 1} mutants left pending")
                return
            spec = item.mutations[0]
            line = spec.start_pos[0]
            stages = select_tests(module, line, cmap, spans)
            operator = get_operator(spec.operator_name)(**spec.operator_args)
            marker = workdir / MARKER
            pristine = workdir / f"{name}.pristine.py"
            pristine.write_bytes(Path(module).read_bytes())
            marker.write_text(json.dumps({"module": module, "pristine": str(pristine)}))
            try:
                with use_mutation(Path(module), operator, spec.occurrence) as (original, mutated):
                    if mutated is None:
                        result = WorkResult(worker_outcome=WorkerOutcome.NO_TEST)
                        outcome = "no mutation"
                    elif in_annotation(item, annotations):
                        result = WorkResult(
                            worker_outcome=WorkerOutcome.NORMAL,
                            test_outcome=TestOutcome.INCOMPETENT,
                            output="annotation, never evaluated: equivalent, not run",
                            diff=_diff(original, mutated),
                        )
                        outcome = "in an annotation (equivalent, not run)"
                    elif (error := syntax_error(mutated, module)) is not None:
                        # e.g. the keyword-only marker `*` of a signature made a `+`
                        result = WorkResult(
                            worker_outcome=WorkerOutcome.NORMAL,
                            test_outcome=TestOutcome.INCOMPETENT,
                            output=f"invalid Python, not run: {error}",
                            diff=_diff(original, mutated),
                        )
                        outcome = "invalid Python (not run)"
                    elif not stages:
                        result = WorkResult(
                            worker_outcome=WorkerOutcome.NORMAL,
                            test_outcome=TestOutcome.SURVIVED,
                            output="not covered: no test of the module's test set runs this code",
                            diff=_diff(original, mutated),
                        )
                        outcome = "SURVIVED (not covered)"
                    else:
                        drop_bytecode(module)
                        outcome, ran, seconds, output = run_mutant(stages, cmap, log)
                        survived = outcome == "survived"
                        result = WorkResult(
                            worker_outcome=WorkerOutcome.NORMAL,
                            test_outcome=TestOutcome.SURVIVED if survived else TestOutcome.KILLED,
                            output=f"{ran} tests, {seconds:.1f} s\n{output}",
                            diff=_diff(original, mutated),
                        )
                        outcome = f"{outcome.upper() if survived else outcome} ({ran} tests, "
                        outcome += f"{seconds:.1f} s)"
            finally:
                drop_bytecode(module)
                if sha256(Path(module)) == sha256(pristine):
                    marker.unlink(missing_ok=True)
            db.set_result(item.job_id, result)
            say(f"[{name} {done + i}/{total_run}] {module}:{line} {spec.operator_name}: {outcome}")
    meta["finished"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta_path.write_text(json.dumps(meta, indent=1))


def restore_interrupted(workdir: Path) -> None:
    """Put back a source file that a killed run left mutated."""
    marker = workdir / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        Path(info["module"]).write_bytes(Path(info["pristine"]).read_bytes())
        marker.unlink()
        say(f"restored {info['module']} from an interrupted run")


# ------------------------------------------------------------------ the report


def summarize(module: str, workdir: Path) -> dict | None:
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    name = Path(module).stem
    db_path, meta_path = workdir / f"{name}.sqlite", workdir / f"{name}.json"
    if not (db_path.exists() and meta_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    counts = dict(killed=0, timeout=0, survived=0, uncovered=0, invalid=0, annotation=0)
    counts.update(other=0, pending=0)
    survivors = []
    with _db(db_path, create=False) as db:
        results = dict(db.results)
        planned, last_line = 0, 0
        for item in db.work_items:
            result = results.get(item.job_id)
            if result is not None and result.worker_outcome == WorkerOutcome.SKIPPED:
                continue
            planned += 1
            if result is not None:
                last_line = max(last_line, item.mutations[0].start_pos[0])
            if result is None:
                counts["pending"] += 1
            elif result.worker_outcome != WorkerOutcome.NORMAL:
                counts["other"] += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                kind = "annotation" if (result.output or "").startswith("annotation") else "invalid"
                counts[kind] += 1
            elif result.test_outcome == TestOutcome.SURVIVED:
                counts["survived"] += 1
                uncovered = (result.output or "").startswith("not covered")
                counts["uncovered"] += uncovered
                survivors.append((item.mutations[0], result, uncovered))
            elif (result.output or "").endswith("\ntimeout"):
                counts["timeout"] += 1
            else:
                counts["killed"] += 1
    run = counts["killed"] + counts["timeout"] + counts["survived"]
    survivors.sort(key=lambda s: (s[0].start_pos, s[0].operator_name))
    return {
        "meta": meta,
        "counts": counts,
        "planned": planned,
        "run": run,
        "survivors": survivors,
        "last_line": last_line,
    }


# The filler of the logits of positions that do not count (losses.py).
_FINITE_FILLER = (
    "**equivalent**: the filler of the logits of positions that do not count only has to be "
    "finite: their loss is replaced by 0 by the second `where` (value), and the first `where` "
    "sends them a zero cotangent whatever the filler (gradient)."
)
# Reasons shared by several equivalent mutants of masks.py (see JUDGEMENTS).
_MASKS_EQUIVALENT_0 = (
    "**equivalent**: the upper bound of `clip(lengths - 1, 0, ...)` only has to be at "
    "least `T - 1`: a length in `[0, T]` gives an index of at most `T - 1` anyway; a "
    "traced length above `T` gathers elsewhere, but `has_step` is False for it (the row "
    "becomes 0, then NaN by `poison`) and the `where` gives that gather a zero cotangent."
)
_MASKS_EQUIVALENT_1 = (
    "**equivalent**: the lower bound only matters for length 0, whose gathered value "
    "`has_step` (False) replaces by 0, and the `where` gives that gather a zero "
    "cotangent."
)
_MASKS_EQUIVALENT_2 = (
    "**equivalent**: `+` of two bool arrays is a logical or in JAX (bool result), and the"
    " two conditions are never both True (`max_len >= 0`)."
)
_MASKS_EQUIVALENT_3 = (
    "**equivalent**: `steps` is a Python int >= 0, so `steps <= 0` is `steps == 0`; for T"
    " = 0 the general path gives the same zeros (nothing valid: `has_step` is False, the "
    "empty gather is replaced) and the same NaN rows for out-of-range traced lengths "
    "(checked by hand: values and gradients)."
)
_MASKS_EQUIVALENT_4 = (
    "**equivalent**: `steps` is a Python int >= 0, so the early return is never taken; "
    "for T = 0 the general path gives the same zeros (nothing valid: `has_step` is False,"
    " the empty gather is replaced) and the same NaN rows for out-of-range traced lengths"
    " (checked by hand: values and gradients)."
)
_MASKS_EQUIVALENT_5 = (
    "**equivalent**: `*` of two bool arrays is a logical and in JAX (bool result)."
)
_MASKS_EQUIVALENT_6 = (
    "**equivalent**: reversing the first 1 step is the identity, as reversing 0 steps is,"
    " so clipping a length of 0 up to 1 changes no index."
)
_MASKS_EQUIVALENT_7 = (
    "**equivalent**: `reverse_index` is internal and its callers pass lengths in `[0, T]`"
    " (out-of-range traced rows are set to 0 first), so the lower bound is never reached."
)
_MASKS_EQUIVALENT_8 = (
    "**equivalent**: the filler length of an out-of-range row only has to leave the row "
    "as it is: reversing the first step alone is the identity, as reversing none is; a "
    "floating row is NaN by `poison` either way."
)
_MASKS_EQUIVALENT_9 = (
    "**equivalent**: the filler length of an out-of-range row only has to leave the row "
    "as it is: `reverse_index` clips -1 to 0, the identity; a floating row is NaN by "
    "`poison` either way."
)


# Surviving mutants judged by hand, keyed by (module, the line it changes, the mutated line),
# both stripped: "gap" (and the test that now kills it) or "equivalent" (and why). The key
# holds across runs whose line numbers differ; the report prints each beside its mutant.
_KILLS = "tests/test_mutant_kills.py::"
JUDGEMENTS: dict[tuple[str, str, str], str] = {
    (
        "jaxseq/losses.py",
        "def _check_logits_labels(logits, labels, *, rank: int | None, logits_doc: str, "
        "labels_doc: str):",
        "def _check_logits_labels(logits, labels, /, rank: int | None, logits_doc: str, "
        "labels_doc: str):",
    ): "**equivalent**: `*` -> `/` in a private helper's signature makes `logits, labels` "
    "positional-only and the rest positional-or-keyword; its three callers pass the first two "
    "positionally and the rest by keyword, so no call changes meaning.",
    (
        "jaxseq/losses.py",
        '_checks.check_min_rank(logits, 1, "logits", logits_doc)',
        '_checks.check_min_rank(logits, 0, "logits", logits_doc)',
    ): "**gap**, closed: a 0-d `logits` reached `logits.shape[-1]` (IndexError) instead of "
    "the error naming `logits`; killed by `"
    + _KILLS
    + "test_scalar_logits_raise_an_error_that_names_logits[cross_entropy]`.",
    (
        "jaxseq/losses.py",
        '_checks.check_min_rank(logits, 1, "logits", "[..., C]")',
        '_checks.check_min_rank(logits, 0, "logits", "[..., C]")',
    ): "**gap**, closed: killed by `"
    + _KILLS
    + "test_scalar_logits_raise_an_error_that_names_logits[soft_cross_entropy]`.",
    (
        "jaxseq/losses.py",
        "logits = jnp.where(where[..., None], logits, 0.0)",
        "logits = jnp.where(where[..., None], logits, 1.0)",
    ): "**equivalent**: the filler of masked logits only has to be finite; every masked "
    "position's loss is replaced by 0 by the second `where` (value), and the first `where` "
    "sends a zero cotangent to masked logits whatever the filler (gradient).",
    (
        "jaxseq/losses.py",
        "logits = jnp.where(where[..., None], logits, 0.0)",
        "logits = jnp.where(where[..., None], logits, -1.0)",
    ): "**equivalent**: as for the filler 1.0 (any finite filler gives the same values and "
    "gradients).",
    (
        "jaxseq/losses.py",
        "labels = jnp.where(where, labels, 0)",
        "labels = jnp.where(where, labels, 1)",
    ): "**equivalent**: the label filler of a masked position only feeds that position's "
    "loss, which the second `where` replaces by 0; an out-of-range filler (C = 1) makes a NaN "
    "there that the second `where` drops, and its cotangent is an exact 0, so gradients are "
    "unchanged.",
    (
        "jaxseq/masks.py",
        "return (lengths < 0) | (lengths > max_len)",
        "return (lengths < 0) ^ (lengths > max_len)",
    ): "**equivalent**: `max_len >= 0`, so `lengths < 0` and `lengths > max_len` are never "
    "both True, and on such bools `^` equals `|`.",
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps << 1)",
    ): "**equivalent**: for a length in `[0, T]` the index `length - 1` is at most `T - 1` "
    "anyway; a traced length above `T` now gathers out of bounds, but `has_step` is False "
    "for it (the row becomes 0, then NaN by `poison`), and the `where` sends that gather a "
    "zero cotangent, so values and gradients are unchanged.",
    (
        "jaxseq/masks.py",
        "return jnp.sum(mask, axis=-1, dtype=jnp.int32)",
        "return jnp.sum(mask, axis=+1, dtype=jnp.int32)",
    ): "**gap**, closed: `axis=+1` is the last axis only for the rank-2 masks every test used; "
    "rank-1 masks fail and rank-3 masks count along the wrong axis. Killed by `"
    + _KILLS
    + "test_mask_lengths_counts_along_the_last_axis_for_every_rank[rank1]` (and `[rank3]`).",
    (
        "jaxseq/recurrence.py",
        "if layer is None or layer == 0:",
        "if layer is None or layer != 0:",
    ): "**gap**, closed: no test raised a width error inside a stack, so swapping the "
    "layer-0 message (the user's `xs`) and the layer-l message (`layer_params[l]` against "
    "layer l - 1's outputs) went unseen. Killed by `"
    + _KILLS
    + "test_stack_width_errors_name_the_input_at_layer_0_and_the_layer_above`.",
    (
        "jaxseq/recurrence.py",
        "use_dropout = train and dropout_rate > 0.0",
        "use_dropout = train and dropout_rate >= 0.0",
    ): "**gap**, closed: training a stack with `dropout_rate=0` must need no PRNG key and "
    "equal `train=False`; the mutant demands a key. Killed by `"
    + _KILLS
    + "test_stack_training_without_dropout_needs_no_key`.",
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps + 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps | 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps ^ 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps // 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps * 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps ** 1)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, 0, steps - 0)",
    ): _MASKS_EQUIVALENT_0,
    (
        "jaxseq/masks.py",
        "index_B = jnp.clip(lengths - 1, 0, steps - 1)",
        "index_B = jnp.clip(lengths - 1, -1, steps - 1)",
    ): _MASKS_EQUIVALENT_1,
    (
        "jaxseq/masks.py",
        "return (lengths < 0) | (lengths > max_len)",
        "return (lengths < 0) + (lengths > max_len)",
    ): _MASKS_EQUIVALENT_2,
    (
        "jaxseq/masks.py",
        "if steps == 0:",
        "if steps <= 0:",
    ): _MASKS_EQUIVALENT_3,
    (
        "jaxseq/masks.py",
        "if steps == 0:",
        "if steps < 0:",
    ): _MASKS_EQUIVALENT_4,
    (
        "jaxseq/masks.py",
        "if steps == 0:",
        "if steps == -1:",
    ): _MASKS_EQUIVALENT_4,
    (
        "jaxseq/masks.py",
        "has_step = (lengths > 0) & (lengths <= steps)",
        "has_step = (lengths > 0) * (lengths <= steps)",
    ): _MASKS_EQUIVALENT_5,
    (
        "jaxseq/masks.py",
        "length = jnp.clip(jnp.asarray(length, jnp.int32), 0, max_len)",
        "length = jnp.clip(jnp.asarray(length, jnp.int32), 1, max_len)",
    ): _MASKS_EQUIVALENT_6,
    (
        "jaxseq/masks.py",
        "length = jnp.clip(jnp.asarray(length, jnp.int32), 0, max_len)",
        "length = jnp.clip(jnp.asarray(length, jnp.int32), -1, max_len)",
    ): _MASKS_EQUIVALENT_7,
    (
        "jaxseq/masks.py",
        "lengths = jnp.where(bad_B, 0, lengths)",
        "lengths = jnp.where(bad_B, 1, lengths)",
    ): _MASKS_EQUIVALENT_8,
    (
        "jaxseq/masks.py",
        "lengths = jnp.where(bad_B, 0, lengths)",
        "lengths = jnp.where(bad_B, -1, lengths)",
    ): _MASKS_EQUIVALENT_9,
    (
        "jaxseq/losses.py",
        "labels = jnp.where(where, labels, 0)",
        "labels = jnp.where(where, labels, -1)",
    ): "**equivalent**: as for the label filler 1: the filler only feeds masked positions, "
    "whose loss the second `where` replaces by 0 (the NaN an out-of-range filler makes there "
    "is dropped, with an exact 0 cotangent); labels are validated before the filler is put in.",
    (
        "jaxseq/losses.py",
        "counted = where & (weight != 0)",
        "counted = where * (weight != 0)",
    ): "**equivalent**: `*` of two bool arrays is a logical and in JAX (bool result).",
    (
        "jaxseq/losses.py",
        "logits = jnp.where(counted[..., None], logits.astype(dtype), 0.0)",
        "logits = jnp.where(counted[..., None], logits.astype(dtype), 1.0)",
    ): _FINITE_FILLER,
    (
        "jaxseq/losses.py",
        "logits = jnp.where(counted[..., None], logits.astype(dtype), 0.0)",
        "logits = jnp.where(counted[..., None], logits.astype(dtype), -1.0)",
    ): _FINITE_FILLER,
}


KILL_TESTS = "tests/test_mutant_kills.py"


def _changed_lines(result) -> tuple[list[str], list[str]]:
    """The removed and added lines of a mutant's diff (without the ``-``/``+``)."""
    lines = (result.diff or "").splitlines()
    removed = [x[1:] for x in lines if x.startswith("-") and not x.startswith("---")]
    added = [x[1:] for x in lines if x.startswith("+") and not x.startswith("+++")]
    return removed, added


def recheck(modules: list[str], workdir: Path, timeout: float = 600.0) -> None:
    """Run the surviving mutants of a finished (or partial) run again, against the kill
    tests of the current checkout (``tests/test_mutant_kills.py``, written for the
    survivors): each mutant's changed line is replaced in a scratch copy of the current
    ``jaxseq/`` (it must occur there exactly once), the kill tests run there (``-x``, a
    fresh process), and the outcome goes to ``<module>.recheck.json`` with the commit;
    the report prints it beside the judgement. The working tree is never touched."""
    import shutil
    import tempfile

    commit = _source_info()
    for module in modules:
        s = summarize(module, workdir)
        if s is None or not s["survivors"]:
            continue
        path = workdir / f"{Path(module).stem}.recheck.json"
        before = json.loads(path.read_text())["mutants"] if path.exists() else {}
        outcomes = {}
        source = Path(module).read_text()
        for spec, result, _ in s["survivors"]:
            removed, added = _changed_lines(result)
            key = f"{spec.start_pos[0]}:{spec.operator_name}:{spec.occurrence}"
            verdict = JUDGEMENTS.get((module, *(x.strip() for x in removed[:1] + added[:1])), "")
            # Kill tests only grow, so an earlier kill stands; an equivalent mutant is
            # expected to survive them: neither is run again.
            if before.get(key, {}).get("outcome") == "killed" or (
                verdict.startswith("**equivalent**") and key in before
            ):
                outcomes[key] = before[key]
                continue
            if len(removed) != 1 or len(added) != 1 or source.count(removed[0]) != 1:
                outcomes[key] = {"outcome": "line not found once in the current source"}
                say(f"recheck {module}:{key}: line not found once; skipped")
                continue
            with tempfile.TemporaryDirectory() as scratch:
                root = Path(scratch)
                for part in ("jaxseq", "tests"):
                    shutil.copytree(part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
                shutil.copy("pyproject.toml", root / "pyproject.toml")
                (root / module).write_text(source.replace(removed[0], added[0]))
                report = root / "junit.xml"
                try:
                    done = subprocess.run(
                        [
                            sys.executable,
                            "-m",
                            "pytest",
                            "-x",
                            "-q",
                            "-p",
                            "no:cacheprovider",
                            "-n",
                            "0",
                            f"--junitxml={report}",
                            KILL_TESTS,
                        ],
                        cwd=root,
                        capture_output=True,
                        text=True,
                        timeout=timeout,
                        check=False,
                    )
                    code = done.returncode
                except subprocess.TimeoutExpired:
                    code = None
                failed = []
                if report.exists():
                    import xml.etree.ElementTree as ET

                    for case in ET.parse(report).getroot().iter("testcase"):
                        if case.find("failure") is not None or case.find("error") is not None:
                            failed.append(f"{case.get('classname')}::{case.get('name')}")
            if code is None:
                outcome = {"outcome": "timeout"}
            elif code == 1 and failed:
                outcome = {"outcome": "killed", "by": failed[0].split(".")[-1]}
            elif code == 0:
                outcome = {"outcome": "survived"}
            else:
                outcome = {"outcome": f"pytest exit {code}"}
            outcome["at"] = commit
            outcomes[key] = outcome
            say(f"recheck {module}:{key}: {outcome}")
        path.write_text(json.dumps({"commit": commit, "mutants": outcomes}, indent=1))


def _recheck_killed(module: str, workdir: Path, spec) -> bool:
    path = workdir / f"{Path(module).stem}.recheck.json"
    if not path.exists():
        return False
    key = f"{spec.start_pos[0]}:{spec.operator_name}:{spec.occurrence}"
    return json.loads(path.read_text())["mutants"].get(key, {}).get("outcome") == "killed"


def _recheck_note(module: str, workdir: Path, spec) -> str:
    path = workdir / f"{Path(module).stem}.recheck.json"
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    got = data["mutants"].get(f"{spec.start_pos[0]}:{spec.operator_name}:{spec.occurrence}")
    if got is None:
        return ""
    where = f"rechecked against `{KILL_TESTS}` at {got.get('at', data['commit'])}"
    if got["outcome"] == "killed":
        return f" *({where}: killed by `{got['by']}`.)*"
    return f" *({where}: {got['outcome']}.)*"


def render_section(label: str, modules: list[str], workdir: Path, info: dict) -> str:
    rows, blocks, sets, sampled, partial = [], [], [], [], []
    total_run = total_killed = 0
    for module in modules:
        judged: list[str] = []
        s = summarize(module, workdir)
        if s is None:
            continue
        meta, c = s["meta"], s["counts"]
        run = s["run"]
        dead = c["killed"] + c["timeout"]
        total_run, total_killed = total_run + run, total_killed + dead
        score = f"{100 * dead / run:.1f}%" if run else "-"
        if c["pending"]:
            done = s["planned"] - c["pending"]
            partial.append(
                f"`{module}`: {done} of {s['planned']} planned mutants have a result, "
                f"{c['pending']} pending"
                + (f" (mutants run in source order: lines 1-{s['last_line']} only)" if done else "")
            )
        if meta["sample"] is not None:
            sampled.append(f"`{module}` ({s['planned']} mutants, seed {meta['seed']})")
            valid = meta["total"] - meta["invalid"]
            valid -= meta["annotations"]
            chosen = (
                f"sample of {s['planned']} (seed {meta['seed']}) of {valid} "
                f"({meta['total']} generated)"
            )
            invalid = f"{meta['invalid']} / {meta['annotations']} (not sampled)"
        else:
            chosen = f"all {meta['total']}"
            invalid = f"{c['invalid']} / {c['annotation']}"
        pending = f" ({c['pending']} pending)" if c["pending"] else ""
        survived = f"{c['survived']}" + (
            f" ({c['uncovered']} not covered)" if c["uncovered"] else ""
        )
        test_set = f"{meta.get('set_tests', '?')} tests, {meta.get('set_seconds', 0) / 60:.1f} min"
        rows.append(
            f"| `{module}` | {test_set} | {chosen} | {invalid} | {run}{pending} | {c['killed']} "
            f"| {survived} "
            f"| {c['timeout']} | {score} | {meta['seconds'] / 60:.0f} min |"
        )
        sets.append(f"`{module}`: {', '.join(meta.get('test_paths', TARGETS[module]))}")
        lines = []
        for spec, result, uncovered in s["survivors"]:
            removed = [x for x in (result.diff or "").splitlines() if x.startswith("-")]
            added = [x for x in (result.diff or "").splitlines() if x.startswith("+")]
            removed = [x for x in removed if not x.startswith("---")]
            added = [x for x in added if not x.startswith("+++")]
            note = ", not covered" if uncovered else ""
            op = spec.operator_name.removeprefix("core/")
            lines.append(f"# {module}:{spec.start_pos[0]} ({op}{note})")
            lines.extend(removed + added)
            key = (module, *(x[1:].strip() for x in removed[:1] + added[:1]))
            verdict = JUDGEMENTS.get(key)
            if verdict is None:
                verdict = (
                    "**gap**, closed: a test of `tests/test_mutant_kills.py` written for the "
                    "survivors kills it (the recheck below)"
                    if _recheck_killed(module, workdir, spec)
                    else "not judged yet"
                )
            note = _recheck_note(module, workdir, spec)
            judged.append(f"- `{module}:{spec.start_pos[0]}` ({op}): {verdict}{note}")
        if lines:
            blocks.append(
                f"#### `{module}`: {c['survived']} surviving\n\n```diff\n"
                + "\n".join(lines)
                + "\n```\n\nJudgement:\n\n"
                + "\n".join(judged)
                + "\n"
            )
        elif run:
            blocks.append(f"#### `{module}`: no surviving mutants\n")
    overall = f"{100 * total_killed / total_run:.1f}%" if total_run else "-"
    title = label[:1].upper() + label[1:]
    default = " (what `make mutants` runs)" if info.get("default", True) else ""
    status = ""
    if partial:
        status = (
            "- **Status: PARTIAL.** The run stopped before it finished; the scores below count "
            "only the mutants that have a result: " + "; ".join(partial) + "\n"
        )
    if sampled:
        status += (
            "- **Sampled, not every mutant:** a seeded random sample of the valid mutants of "
            + ", ".join(sampled)
            + "\n"
        )
    return (
        f"## {title}\n\n"
        f"- Command: `{info['command']}`{default}\n"
        + status
        + f"- Date: {info['date']}; source: {info['source']}\n"
        f"- Tool: cosmic-ray {info['cosmic_ray']} (mutant generation, default operators; "
        f"session databases in `{workdir}`), run by `tools/mutants.py` "
        f"(pytest {info['pytest']}, coverage {info['coverage']}, Python {info['python']})\n"
        f"- Tests: each mutant runs the tests of its module's test set that execute the mutated "
        f"statement, file by file (`-x`, one process per file, timeout 60 s + 3x their time); "
        f"XLA's persistent compilation cache is on\n"
        f"- Overall score: {overall} ({total_killed} of {total_run} mutants run killed)\n\n"
        "| module | test set (baseline) | mutants | invalid / annotation | run | killed "
        "| survived | timeout "
        "| score | time |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        'Score = (killed + timeout) / run. Not run and not scored: "invalid", the mutant is '
        "not valid Python (cosmic-ray turns the keyword-only marker `*` of a signature into "
        'another operator); "annotation", the mutant is inside a type annotation, which '
        "`from __future__ import annotations` keeps a string that nothing evaluates (equivalent "
        'by construction). "Not covered": no test of the module\'s test set '
        "executes the mutated statement. Baseline: the test set's time in the coverage run "
        "(unmutated code, caches cleared before each test). Test sets (a module's own path: "
        "its doctests): " + "; ".join(sets) + ".\n\n"
        "### Surviving mutants\n\n" + "\n".join(blocks)
    )


HEADER = """# Mutation testing

Generated by `make mutants` (`tools/mutants.py`, never part of `make test` or CI). Every
mutant of `jaxseq/losses.py` and `jaxseq/masks.py` and a seeded random sample of
`jaxseq/recurrence.py` and `jaxseq/_fused.py`; each section below is one labelled run
(`make mutants MUTANTS_LABEL=<label>`). A surviving mutant is a test gap to close with a
test or an equivalent mutant to explain.
"""


def write_report(report: Path, label: str, section: str) -> None:
    text = report.read_text() if report.exists() else HEADER
    heading = section.splitlines()[0]
    parts = text.split("\n## ")
    head, sections = parts[0], ["## " + p for p in parts[1:]]
    replaced = False
    for i, old in enumerate(sections):
        if old.splitlines()[0] == heading:
            sections[i], replaced = section, True
    if not replaced:
        sections.append(section)
    body = head.rstrip("\n") + "\n\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(body)


def _source_info() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "jaxseq", "tests"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {commit}" + (" with uncommitted changes in jaxseq/ or tests/" if dirty else "")


def _versions() -> dict:
    from importlib.metadata import version

    return {
        "cosmic_ray": version("cosmic-ray"),
        "pytest": version("pytest"),
        "coverage": version("coverage"),
        "python": sys.version.split()[0],
    }


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="latest", help="report section (and work dir) name")
    parser.add_argument("--modules", default="losses,masks,recurrence,_fused")
    parser.add_argument(
        "--sample", type=int, default=SAMPLE, help="mutants per sampled module (recurrence, _fused)"
    )
    parser.add_argument(
        "--sample-all",
        type=int,
        default=None,
        metavar="N",
        help="a time-bounded run: also sample N valid mutants (same seed) of losses and masks "
        "instead of running every mutant of them",
    )
    parser.add_argument(
        "--stop-at",
        default=None,
        metavar="HH:MM",
        help="UTC time after which no new mutant starts (the rest stay pending: a partial "
        "section; the same command later resumes)",
    )
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the sample")
    parser.add_argument("--fresh", action="store_true", help="discard a previous run's results")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--report-only", action="store_true", help="rewrite the report section")
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run the label's surviving mutants against tests/test_mutant_kills.py of the "
        "current checkout (in a scratch copy), then rewrite the report section",
    )
    args = parser.parse_args(argv)

    os.nice(max(0, 19 - os.nice(0)))
    for module, paths in list(TARGETS.items()):
        TARGETS[module] = tuple(p for p in paths if Path(p).exists())
    deadline = None
    if args.stop_at:
        hour, minute = (int(x) for x in args.stop_at.split(":"))
        now = datetime.datetime.now(datetime.UTC)
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if deadline < now - datetime.timedelta(hours=12):
            deadline += datetime.timedelta(days=1)
    modules = [f"jaxseq/{m.strip().removesuffix('.py')}.py" for m in args.modules.split(",")]
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        parser.error(f"unknown modules {unknown}; known: {list(TARGETS)}")
    workdir = WORKDIR / args.label
    workdir.mkdir(parents=True, exist_ok=True)
    info_path = workdir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}

    def report() -> None:
        section = render_section(args.label, modules, workdir, info)
        write_report(args.report, args.label, section)
        say(f"wrote the '{args.label}' section of {args.report}")

    if args.report_only:
        report()
        return 0
    if args.recheck:
        recheck(modules, workdir)
        report()
        return 0

    restore_interrupted(workdir)
    for module in modules:
        drop_bytecode(module)
    _preimport(WORKDIR / "xla-cache")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sessions = {
        m: prepare_session(
            m, workdir, sample_size(m, args.sample, args.sample_all), args.seed, args.fresh
        )
        for m in modules
    }
    argv_used = sys.argv[1:] if argv is None else argv
    info = {
        "command": "python -m tools.mutants " + shlex.join(argv_used),
        "default": not any(
            a.split("=")[0] in ("--sample", "--sample-all", "--modules", "--seed")
            for a in argv_used
        ),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "source": _source_info(),
        **_versions(),
    }
    info_path.write_text(json.dumps(info, indent=1))
    for module, meta in sessions.items():
        if past(deadline):
            say(f"{module}: --stop-at reached before it started; not run")
            continue
        start = time.monotonic()
        meta["test_paths"] = list(TARGETS[module])
        cmap = coverage_map(module, workdir)
        prefixes = tuple(p + "::" for p in TARGETS[module])
        meta["set_tests"] = sum(t.startswith(prefixes) for t in cmap["order"])
        meta["set_seconds"] = round(set_seconds(module, cmap), 1)
        meta["coverage_seconds"] = meta.get("coverage_seconds", 0.0) + time.monotonic() - start
        start = time.monotonic()
        try:
            run_session(module, workdir, cmap, meta, deadline)
        finally:
            meta["seconds"] = meta.get("seconds", 0.0) + time.monotonic() - start
            (workdir / f"{Path(module).stem}.json").write_text(json.dumps(meta, indent=1))
            report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
