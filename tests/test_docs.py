"""The documentation: the site builds with warnings as errors, and the shell blocks run.

* ``make docs`` (``tools/build_docs.py``) builds the API reference of every public module
  and a page per guide with every pdoc warning, unresolved cross-reference and broken guide
  link an error; here it builds into a temporary folder, and the built pages are checked
  independently: every guide and every public module has its page, and every relative
  link of every page resolves (the file, and the anchor on an HTML page).
* Every shell block (```sh / ```bash) of the README and the guides runs, or is marked
  ``<!-- not run: REASON -->`` on the line before it (make targets, installs, clusters).
  A block that runs is made of single-machine experiment commands
  (``[VAR=value ...] python -m experiments.NAME [flags] [&]`` and ``wait``); each runs at
  ``--smoke`` with a temporary ``--out-dir`` unless the block gives one (relative paths land
  in a temporary folder).
* The scaling-out guide's training script runs as a user runs it: a fresh process, on one
  device and on two.
"""

import html.parser
import os
import pathlib
import re
import shlex
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(
    r"(?:<!--\s*not run:(?P<reason>.*?)-->\n)?```(?:sh|bash|shell|console)\n(?P<body>.*?)```",
    re.S,
)
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHONS = {"python", "python3", ".venv/bin/python"}
BLOCK_TIMEOUT_S = 300


# --- the site ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("pdoc", reason="pdoc is the docs extra (pip install -e '.[docs]')")
    from tools import build_docs

    return build_docs.build(tmp_path_factory.mktemp("docs") / "site")


def _public_modules():
    """jaxseq's public modules, from the files (no part of the dotted name starts with _)."""
    names = []
    for path in sorted((ROOT / "jaxseq").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.append(".".join(parts))
    return names


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):  # a <script>'s text is not parsed as tags
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for name in ("href", "src"):
            if attrs.get(name):
                self.links.append(attrs[name])


def _parse(page: pathlib.Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


@pytest.mark.docs
def test_every_guide_and_every_public_module_has_a_page(site):
    out = site.out
    home = (out / "index.html").read_text(encoding="utf-8")
    guides = sorted((ROOT / "docs").glob("*.md"))
    assert len(guides) >= 6
    for guide in guides:
        page = out / "docs" / f"{guide.stem}.html"
        assert page.is_file(), f"no page for {guide.name}"
        first_line = guide.read_text(encoding="utf-8").lstrip().partition("\n")[0]
        assert first_line.startswith("# "), f"{guide.name} does not start with a '# title'"
        text = page.read_text(encoding="utf-8")
        assert "<h1" in text and f'href="docs/{guide.stem}.html"' in home
        assert "<pre" in text or "```" not in guide.read_text(encoding="utf-8")
    modules = _public_modules()
    assert {"jaxseq", "jaxseq.training", "jaxseq.data", "jaxseq.nnx"} <= set(modules)
    assert set(site.modules) == set(modules)
    for name in modules:
        page = out / "api" / (name.replace(".", "/") + ".html")
        assert page.is_file(), f"no API page for {name}"
        assert name.rpartition(".")[2] in page.read_text(encoding="utf-8")
    # The API reference documents the functions, e.g. rnn's docstring is on jaxseq's page,
    # and nnx's shared base (documented for the build only: __all__ is restored after it).
    assert 'id="rnn"' in (out / "api" / "jaxseq.html").read_text(encoding="utf-8")
    assert 'id="_SequenceModel.from_params"' in (out / "api/jaxseq/nnx.html").read_text()
    import jaxseq.nnx

    assert jaxseq.nnx.__all__ == ["RNN", "SequenceClassifier", "SequenceLabeler"]


@pytest.mark.docs
def test_every_relative_link_of_the_site_resolves(site):
    out, parsed, broken, checked = site.out, {}, [], 0
    pages = sorted(out.rglob("*.html"))
    for page in pages:
        for href in _parse(page).links:
            if re.match(r"[a-z][a-z0-9+.-]*:", href):
                continue  # a URL (https:, data:)
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(out)} -> {href}")
            elif anchor and target.suffix == ".html":
                if target not in parsed:
                    parsed[target] = _parse(target).ids
                if anchor not in parsed[target]:
                    broken.append(f"{page.relative_to(out)} -> {href} (no such anchor)")
    assert checked > 1000, f"only {checked} links checked"
    assert not broken, "\n".join(broken)


@pytest.mark.docs
def test_a_broken_reference_or_link_fails_the_build(tmp_path, monkeypatch):
    pytest.importorskip("pdoc", reason="pdoc is the docs extra (pip install -e '.[docs]')")
    from tools import build_docs

    package = tmp_path / "docsfixture"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""A package.\n\nSee :func:`docsfixture.real`, :func:`docsfixture.missing` and '
        ':func:`jax.jit`."""\n\n\ndef real():\n    """Exists."""\n'
    )
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Part one\n\ntext\n")
    (tmp_path / "README.md").write_text(
        "# Fixture\n\n[ok](docs/guide.md#part-one) [bad anchor](docs/guide.md#part-two) "
        "[gone](docs/gone.md)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(build_docs.DocsError) as error:
        build_docs.build(tmp_path / "site", root=tmp_path, package="docsfixture")
    problems = "\n".join(error.value.problems)
    assert "`docsfixture.missing()` does not resolve" in problems
    assert "#part-two" in problems and "docs/gone.md" in problems
    assert "docsfixture.real" not in problems and "jax.jit" not in problems
    assert "#part-one" not in problems


# --- shell blocks -----------------------------------------------------------------------


def _shell_blocks():
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for index, m in enumerate(SHELL_BLOCK.finditer(text)):
            line = text.count("\n", 0, m.start("body"))
            yield path, index, line, m.group("reason"), m.group("body")


def _commands(body: str):
    """The block's commands: (env, argv, background) tuples, or None for ``wait``.

    Raises ValueError for a command that is not a single-machine experiment command.
    """
    commands = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        tokens = shlex.split(line, comments=True)
        if not tokens:
            continue
        if tokens == ["wait"]:
            commands.append(None)
            continue
        background = tokens[-1] == "&"
        tokens = tokens[:-1] if background else tokens
        env = {}
        while tokens and ASSIGNMENT.match(tokens[0]):
            name, _, value = tokens.pop(0).partition("=")
            env[name] = value
        if len(tokens) < 3 or tokens[0] not in PYTHONS or tokens[1] != "-m":
            raise ValueError(f"not an experiment command: {line.strip()!r}")
        if not tokens[2].startswith("experiments."):
            raise ValueError(f"not an experiment command: {line.strip()!r}")
        commands.append((env, tokens[2], tokens[3:], background))
    return commands


def _runnable_blocks():
    for path, _, line, reason, body in _shell_blocks():
        if reason is None:
            yield pytest.param(body, id=f"{path.relative_to(ROOT)}:{line}")


@pytest.mark.docs
def test_every_shell_block_runs_or_says_why_not():
    blocks = list(_shell_blocks())
    assert len(blocks) >= 4
    problems = []
    for path, _, line, reason, body in blocks:
        where = f"{path.relative_to(ROOT)}:{line}"
        if reason is not None:
            if len(reason.strip()) < 8:
                problems.append(f"{where}: the not-run marker needs a reason")
            continue
        try:
            commands = _commands(body)
        except ValueError as error:
            problems.append(f"{where}: {error}; run it here or mark it <!-- not run: why -->")
            continue
        if not any(commands):
            problems.append(f"{where}: no command")
        for command in filter(None, commands):
            if not (ROOT / (command[1].replace(".", "/") + ".py")).is_file():
                problems.append(f"{where}: no module {command[1]}")
    assert not problems, "\n".join(problems)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(extra=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAXSEQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@pytest.mark.training_smoke
@pytest.mark.parametrize("body", list(_runnable_blocks()))
def test_shell_block_runs_at_smoke(body, tmp_path):
    ports = {}
    running, out_dirs = [], set()

    def finish(process, argv):
        try:
            output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert process.returncode == 0, f"{shlex.join(argv)} failed:\n{output[-4000:]}"

    try:
        for k, command in enumerate(_commands(body)):
            if command is None:  # wait
                while running:
                    finish(*running.pop(0))
                continue
            env, module, args, background = command
            for name, value in env.items():  # a local coordinator gets a free port
                m = re.fullmatch(r"(127\.0\.0\.1|localhost):(\d+)", value)
                if m:
                    port = ports.setdefault(m.group(2), _free_port())
                    env = {**env, name: f"{m.group(1)}:{port}"}
            args = list(args)
            if "--smoke" not in args:
                args.append("--smoke")
            if not any(a == "--out-dir" or a.startswith("--out-dir=") for a in args):
                args += ["--out-dir", f"runs/command-{k}"]
            out_dir = args[args.index("--out-dir") + 1] if "--out-dir" in args else None
            out_dirs.add(out_dir)
            argv = [sys.executable, "-m", module, *args]
            process = subprocess.Popen(
                argv,
                cwd=tmp_path,
                env=_child_env(env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            running.append((process, argv))
            if not background:
                finish(*running.pop())
        while running:
            finish(*running.pop(0))
    finally:
        for process, _ in running:
            process.kill()
            process.communicate()
    for out_dir in filter(None, out_dirs):
        assert (tmp_path / out_dir / "result.json").is_file(), f"no result.json in {out_dir}"


def _scaling_out_script() -> str:
    text = (ROOT / "docs" / "scaling_out.md").read_text(encoding="utf-8")
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "setup_from_env" in b]
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.training_smoke
@pytest.mark.parametrize("devices", [None, 2], ids=["one-device", "two-cpu-devices"])
def test_scaling_out_script_runs_in_a_fresh_process(devices, tmp_path):
    # As a user runs it: `python train.py`, distributed.setup_from_env() first. With no
    # JAXSEQ_* variable it is the plain single-device run; with two CPU devices the same
    # script runs data-parallel.
    script = tmp_path / "train.py"
    script.write_text(_scaling_out_script())
    extra = {} if devices is None else {"JAXSEQ_CPU_DEVICES": str(devices)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_child_env(extra),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert re.search(r"'accuracy': 0\.\d+", done.stdout), done.stdout
    assert (tmp_path / "runs" / "mine" / "metrics.jsonl").is_file()
