"""Build the documentation site: the API reference (pdoc) and the guides, warnings as errors.

    python -m tools.build_docs [--out site]

Writes ``<out>/index.html`` (the README), one page per guide (``docs/*.md`` ->
``<out>/docs/NAME.html``) and per markdown file they link to (``reports/*.md``), and the API
reference of every public module of jaxseq under ``<out>/api/`` (``jaxseq``,
``jaxseq.training``, ``jaxseq.data``, ``jaxseq.nnx`` and their submodules: every module
whose dotted name has no part starting with ``_``).

Docstrings are Google style (``Args:``, ``Returns:``) with reStructuredText roles
(:func:`jaxseq.rnn`, :mod:`.steps`), pdoc's ``google`` docformat. The build fails, listing
every problem, on:

* any warning pdoc emits (a docstring or an annotation it cannot process);
* a role (``:func:``, ``:mod:``, ``:class:``, ...) that pdoc does not turn into a link to a
  documented object: a cross-reference to something private, misspelt or undocumented
  (a role naming an object outside jaxseq, such as :func:`jax.jit`, must import; it stays
  unlinked code);
* a relative link in a guide to a file that does not exist, or to an anchor
  (``semantics.md#section``) that its page does not have (a linked markdown file becomes a
  page, any other linked file of the repository is copied into the site).

Exit status 0 on success, 1 with the list of problems otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import pathlib
import pkgutil
import posixpath
import re
import shutil
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "jaxseq"
API_DIR = "api"
GUIDES = ("README.md", "docs/*.md")
# The guides' order in the navigation (others follow alphabetically).
GUIDE_ORDER = ("semantics", "recurrence", "training", "scaling_out", "nnx", "pytorch")
# The API entry points listed in the guides' navigation (the pages link to the rest).
API_ENTRY_POINTS = ("", ".training", ".data", ".nnx", ".interop")
TEMPLATES = pathlib.Path(__file__).resolve().parent / "pdoc_templates"

# pdoc warnings that are not documentation problems, each with its reason. Nothing else
# is tolerated.
KNOWN_PDOC_LIMITS = (
    # optax's state aliases (optax.OptState = chex.ArrayTree) are recursive unions whose
    # inner ForwardRef('ArrayTree') pdoc cannot evaluate outside chex; the page shows the
    # annotation as written (`optax.OptState`), which is what it should show.
    r"^Error parsing type annotation optax\.\w+ for [\w.]+\. Import of ArrayTree failed",
)

# pdoc's reStructuredText roles (pdoc.docstrings.rst turns each into `name` or `name()`).
_ROLE = re.compile(r"(?::py)?:(?:mod|func|data|const|class|meth|attr|exc|obj):`[^`]+`")
# Appended to each role before pdoc converts it, so that the rendered <code> element
# can be recognised after linkify (and removed): U+2063 INVISIBLE SEPARATOR.
_MARK = "\u2063"
_MARKED_CODE = re.compile(r"<code>((?:(?!</?code>).)*)</code>" + _MARK, re.S)
_LEFTOVER_ROLE = re.compile(r":[a-z]+:`[^`]+`")
_HREF = re.compile(r'(href|src)="([^"]*)"')
_ID = re.compile(r'\sid="([^"]*)"')
_TABLE_BORDER = re.compile(r"^([ \t]*)=+(?: +=+)+[ \t]*$")
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)


class DocsError(Exception):
    """The documentation has problems; ``problems`` lists each on one line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{len(problems)} documentation problem(s):\n" + "\n".join(problems))


@dataclasses.dataclass(frozen=True)
class Site:
    """What a build wrote: the folder, the guide pages and the API modules."""

    out: pathlib.Path
    pages: dict[str, str]  # markdown source (relative to the repo) -> page (relative to out)
    modules: tuple[str, ...]  # documented module names

    def module_page(self, name: str) -> str:
        """The page of module ``name``, relative to ``out``."""
        return _module_page(name)


def _module_page(name: str) -> str:
    return posixpath.join(API_DIR, *name.split(".")) + ".html"


def public_modules(package: str = PACKAGE) -> list[str]:
    """Every module of ``package`` whose dotted name has no part starting with ``_``."""
    root = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(root.__path__, prefix=package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def _page_of(source: str) -> str:
    """The site page of a markdown file of the repo (``README.md`` is the home page)."""
    return "index.html" if source == "README.md" else source[: -len(".md")] + ".html"


def _relative(from_page: str, to_page: str) -> str:
    return posixpath.relpath(to_page, posixpath.dirname(from_page) or ".")


def _title(text: str, fallback: str) -> str:
    m = re.search(r"^#{1,2} +(.+)$", text, re.M)
    return m.group(1).strip().strip("`") if m else fallback


def _ids(page_html: str) -> set[str]:
    return set(_ID.findall(page_html))


def _fix_namedtuple_modules(modules, undo: list) -> None:
    """Point each NamedTuple's generated ``__new__`` at the class's own module.

    ``typing.NamedTuple`` creates ``__new__`` in a synthetic module (``namedtuple_Cell``),
    so pdoc cannot evaluate its string annotations (``from __future__ import
    annotations``) and warns about every field. While the docs build, ``__new__``
    names the module that defines the class, where those names exist (``undo`` restores).
    """
    for module in modules:
        for value in vars(module).values():
            new = getattr(value, "__new__", None)
            if (
                isinstance(value, type)
                and issubclass(value, tuple)
                and hasattr(value, "_fields")
                and getattr(new, "__module__", "").startswith("namedtuple_")
            ):
                undo.append(lambda new=new, old=new.__module__: setattr(new, "__module__", old))
                new.__module__ = value.__module__


def _rst_tables(text: str) -> str:
    """reStructuredText simple tables (``===  ===`` borders) as Markdown tables.

    A line whose first column is blank continues the row above (its cells are appended);
    the rows between the first two borders are the header.
    """
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        border = _TABLE_BORDER.match(lines[i])
        if not border:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        indent, rows, borders, i = border.group(1), [], 1, i + 1
        header_rows = None
        while i < len(lines) and borders < 3:
            line = lines[i]
            i += 1
            if _TABLE_BORDER.match(line):
                borders += 1
                if borders == 2:
                    header_rows = len(rows)
                continue
            if not line.strip():
                continue
            cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
            if cells[0] or not rows:
                rows.append(cells)
            else:
                rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        header_rows = header_rows or 0
        header = rows[:header_rows] or [[""] * len(starts)]
        table = [" | ".join(" ".join(c) for c in zip(*header)), " | ".join(["---"] * len(starts))]
        table += [" | ".join(row) for row in rows[header_rows:]]
        out += ["", *(f"{indent}| {row} |" for row in table), ""]
    return "\n".join(out)


def _rst_literals(text: str) -> str:
    """reStructuredText ``::`` before an indented block: ``text::`` -> ``text:``, a line
    ``::`` alone is dropped (Markdown already shows the indented block as code)."""
    text = re.sub(r"^[ \t]*::[ \t]*$", "", text, flags=re.M)
    return re.sub(r"(\S)::[ \t]*$", r"\1:", text, flags=re.M)


def _external(target: str, package: str) -> bool:
    """Whether ``target`` names an existing object outside jaxseq (``jax.jit``): such a
    cross-reference stays unlinked code; one into jaxseq must link to its documentation."""
    parts = target.removesuffix("()").split(".")
    if parts[0] in ("", package) or len(parts) < 2:
        return False
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def _specs(modules: list[str]) -> list[str]:
    """The fewest module specs for pdoc that document ``modules`` (pdoc walks a package's
    submodules itself and warns about a module named twice)."""
    from pdoc.extract import walk_specs

    specs: list[str] = []
    for name in modules:
        if not specs or name not in walk_specs(specs):
            specs.append(name)
    return specs


def _document_private_bases(modules, undo: list) -> None:
    """Document the private base classes that public classes inherit from (in this process).

    A public class that inherits its constructor and methods from a private class of its
    module (``jaxseq.nnx.SequenceLabeler`` from ``_SequenceModel``) would link to
    documentation that does not exist; while the docs build, the base is added to the
    module's ``__all__`` (``undo`` restores it).
    """
    for module in modules:
        names = getattr(module, "__all__", None)
        if names is None:
            continue
        extra = []
        for name in names:
            value = getattr(module, name, None)
            for base in getattr(value, "__mro__", ())[1:] if isinstance(value, type) else ():
                private = base.__name__.startswith("_") and base.__module__ == module.__name__
                if private and base.__name__ not in [*names, *extra]:
                    extra.append(base.__name__)
        if extra:
            undo.append(lambda module=module, names=names: setattr(module, "__all__", names))
            module.__all__ = [*names, *extra]


def _build_api(out: pathlib.Path, modules: list[str], problems: list[str]) -> None:
    package = modules[0].partition(".")[0]
    import jinja2
    import pdoc
    import pdoc.render
    from markupsafe import Markup

    imported = [importlib.import_module(name) for name in modules]
    undo: list = []
    _fix_namedtuple_modules(imported, undo)
    _document_private_bases(imported, undo)
    pdoc.render.configure(
        docformat="google",
        template_directory=TEMPLATES,
        show_source=False,
        footer_text=f"{package} API reference",
    )
    env = pdoc.render.env
    to_markdown, linkify = env.filters["to_markdown"], env.filters["linkify"]

    @jinja2.pass_context
    def marking_to_markdown(context, docstring):
        docstring = _rst_literals(_rst_tables(docstring))
        markdown = to_markdown(context, _ROLE.sub(lambda m: m.group(0) + _MARK, docstring))
        where = context["module"].modulename
        for role in _LEFTOVER_ROLE.findall(markdown):
            problems.append(f"{where}: pdoc cannot convert the role {role}")
        return markdown

    @jinja2.pass_context
    def checking_linkify(context, code, namespace="", shorten=True):
        linked = str(linkify(context, code, namespace, shorten))
        where = ".".join(filter(None, [context["module"].modulename, namespace]))
        for m in _MARKED_CODE.finditer(linked):
            target = html.unescape(re.sub(r"<[^>]+>", "", m.group(1)))
            if "<a " not in m.group(1) and not _external(target, package):
                problems.append(
                    f"{where}: the cross-reference `{target}` does not resolve to a "
                    "documented object"
                )
        return Markup(linked.replace(_MARK, ""))

    env.filters["to_markdown"] = marking_to_markdown
    env.filters["linkify"] = checking_linkify
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pdoc.pdoc(*_specs(modules), output_directory=out / API_DIR)
    finally:
        env.filters["to_markdown"], env.filters["linkify"] = to_markdown, linkify
        for restore in reversed(undo):
            restore()
    for w in caught:
        if not any(re.search(pattern, str(w.message)) for pattern in KNOWN_PDOC_LIMITS):
            problems.append(f"pdoc warning ({w.category.__name__}): {w.message}")
    for page in (out / API_DIR).rglob("*.html"):  # a mark in a part that is not linkified
        text = page.read_text(encoding="utf-8")
        if _MARK in text:
            page.write_text(text.replace(_MARK, ""), encoding="utf-8")


_PAGE = """\
{% extends "frame.html.jinja2" %}
{% block title %}{{ title }} · jaxseq{% endblock %}
{% block nav %}
  <h2><a href="{{ home }}">jaxseq</a></h2>
  <h2>Guides</h2>
  <ul>{% for href, text in guides %}<li><a href="{{ href }}">{{ text }}</a></li>{% endfor %}</ul>
  <h2>API reference</h2>
  <ul>{% for href, text in api %}<li><a href="{{ href }}">{{ text }}</a></li>{% endfor %}</ul>
  {% if toc %}<h2>Contents</h2>{{ toc | safe }}{% endif %}
{% endblock %}
{% block content %}<main class="pdoc">{{ body | safe }}</main>{% endblock %}
"""


def _guide_sources(root: pathlib.Path) -> list[str]:
    found = []
    for pattern in GUIDES:
        found += sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
    return found


def _build_guides(
    out: pathlib.Path, root: pathlib.Path, package: str, modules: list[str], problems: list[str]
) -> dict[str, str]:
    import pdoc.render
    from pdoc.render_helpers import to_html

    # The pages: README, the guides, and every markdown file of the repo they link to.
    queue = _guide_sources(root)
    rendered: dict[str, tuple[str, str, str]] = {}  # source -> (title, body, toc)
    links: dict[str, list[tuple[str, str]]] = {}  # source -> [(href as written, resolved)]
    while queue:
        source = queue.pop(0)
        if source in rendered:
            continue
        text = (root / source).read_text(encoding="utf-8")
        body = to_html(text)
        rendered[source] = (_title(text, source), str(body), body.toc_html or "")
        links[source] = []
        for _, href in _HREF.findall(str(body)):
            if re.match(r"[a-z][a-z0-9+.-]*:|#", href):  # a URL, or an anchor on the page
                continue
            path = href.split("#")[0]
            target = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
            links[source].append((href, target))
            if target.endswith(".md") and (root / target).is_file():
                queue.append(target)

    pages = {source: _page_of(source) for source in rendered}
    page_ids = {source: _ids(rendered[source][1]) for source in rendered}
    guides = sorted(
        (s for s in rendered if s.startswith("docs/")),
        key=lambda s: (GUIDE_ORDER.index(_stem(s)) if _stem(s) in GUIDE_ORDER else 99, s),
    )
    entry_points = [m for m in modules if m in {package + e for e in API_ENTRY_POINTS}]
    template = pdoc.render.env.from_string(_PAGE)
    for source, (title, body, toc) in rendered.items():
        page = pages[source]
        for href, target in links[source]:
            anchor = href.partition("#")[2]
            if target not in pages:
                if (root / target).is_file() and not target.startswith(".."):
                    # Another file of the repository: copied beside the pages.
                    (out / target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(root / target, out / target)
                else:
                    problems.append(f"{source}: the link {href!r}: there is no {target}")
                continue
            if anchor and anchor not in page_ids[target]:
                problems.append(f"{source}: the link {href!r}: {target} has no anchor #{anchor}")
            new = _relative(page, pages[target]) + (f"#{anchor}" if anchor else "")
            body = body.replace(f'href="{href}"', f'href="{new}"')
        document = template.render(
            title=title,
            home=_relative(page, "index.html"),
            guides=[(_relative(page, pages[g]), rendered[g][0]) for g in guides],
            api=[(_relative(page, _module_page(m)), m) for m in entry_points],
            toc=toc,
            body=body,
        )
        (out / page).parent.mkdir(parents=True, exist_ok=True)
        (out / page).write_text(document, encoding="utf-8")
    return pages


def _stem(source: str) -> str:
    return posixpath.splitext(posixpath.basename(source))[0]


def broken_links(out: pathlib.Path) -> list[str]:
    """Relative links of the site's pages whose file (or anchor) does not exist."""
    problems, ids = [], {}
    for page in sorted(out.rglob("*.html")):
        text = _SCRIPT.sub("", page.read_text(encoding="utf-8"))
        for _, href in _HREF.findall(text):
            if not href or re.match(r"[a-z][a-z0-9+.-]*:", href):
                continue
            path, _, anchor = html.unescape(href).partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.is_file():
                problems.append(f"{page.relative_to(out)}: broken link {href!r}")
            elif anchor and target.suffix == ".html":
                if target not in ids:
                    ids[target] = _ids(target.read_text(encoding="utf-8"))
                if anchor not in ids[target]:
                    problems.append(f"{page.relative_to(out)}: no anchor for {href!r}")
    return problems


def build(
    out: pathlib.Path | str = "site", root: pathlib.Path = ROOT, package: str = PACKAGE
) -> Site:
    """Build the site into ``out`` (emptied first); raises :class:`DocsError` on problems.

    ``root`` is the repository (its README and ``docs/``), ``package`` the importable
    package whose public modules make the API reference.
    """
    out = pathlib.Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    problems: list[str] = []
    modules = public_modules(package)
    _build_api(out, modules, problems)
    pages = _build_guides(out, root, package, modules, problems)
    problems += broken_links(out)
    if problems:
        raise DocsError(problems)
    return Site(out, pages, tuple(modules))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="site", help="output folder (default: site)")
    args = parser.parse_args(argv)
    try:
        site = build(args.out)
    except DocsError as e:
        print(e, file=sys.stderr)
        return 1
    print(
        f"{args.out}/index.html: {len(site.pages)} pages, "
        f"API reference of {len(site.modules)} modules"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
