"""The modules' docstrings name chapters that exist.

Convention: a module docstring cites a chapter as ``chapter "Title"`` (or ``chapters "A", "B" and
"C"``), where Title is the chapter's ``# Title`` in ``book/`` or its short form, the part before the
colon ("The baseline" for "The baseline: a deterministic network"). Every module that a chapter
explains cites one; the infrastructure modules in `NO_CHAPTER` explain no chapter.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "cvae_utils").glob("*.py"))
# infrastructure: the package's entry points, the cache and files, the environment and the
# progress lines (the README explains them; no chapter does)
NO_CHAPTER = {"__init__.py", "__main__.py", "cache.py", "cluster.py", "files.py", "progress.py",
              "settings.py"}

# `chapter "A"`, `chapters "A" and "B"`, `chapters "A", "B" and "C"`
CITATION = re.compile(r'\b[Cc]hapters?\s+((?:"[^"]+"(?:,\s*and\s+|\s+and\s+|,\s*)?)+)')
QUOTED = re.compile(r'"([^"]+)"')


def chapter_titles() -> dict[str, str]:
    """{title or short title: file name} for every chapter of book/ (label line, then # Title)."""
    titles = {}
    for path in sorted((ROOT / "book").glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for label, heading in zip(lines, lines[1:]):
            if re.fullmatch(r"\([\w-]+\)=", label.strip()) and heading.startswith("# "):
                title = heading[2:].strip()
                titles[title] = titles[title.split(":")[0].strip()] = path.name
                break
    return titles


def cited_chapters(docstring: str) -> list[str]:
    """The chapter titles a docstring cites, white space folded (titles may wrap lines)."""
    return [" ".join(title.split()) for group in CITATION.findall(docstring)
            for title in QUOTED.findall(group)]


def test_the_citation_pattern_reads_lists_and_wrapped_titles():
    text = ('explained in chapter "The\n    problem"; chapters "Data and masking", "The baseline" '
            'and "Evaluation" use it; the "chapter" here is not a citation')
    assert cited_chapters(text) == ["The problem", "Data and masking", "The baseline",
                                    "Evaluation"]


def test_every_chapter_has_a_title():
    titles = chapter_titles()
    files = {path.name for path in (ROOT / "book").glob("*.md")}
    assert set(titles.values()) == files
    assert titles["The baseline"] == "baseline.md"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_module_docstrings_cite_chapters_that_exist(path):
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    cited = cited_chapters(docstring)
    titles = chapter_titles()
    missing = [title for title in cited if title not in titles]
    assert not missing, (f"{path.name} cites chapter(s) {missing} that book/ does not have; "
                         f"use a chapter's '# Title' or its part before the colon: "
                         f"{sorted(titles)}")
    if path.name not in NO_CHAPTER:
        assert cited, (f'{path.name}: its docstring names no chapter; say which chapter explains '
                       f'it as chapter "Title"')


# the widest code line that the built HTML pages show without a sideways scroll bar (measured in
# Chromium: 75 columns for a plain cell)
PAGE_WIDTH = 75
LITERALINCLUDE = re.compile(r"^```\{literalinclude\}\s+(\S+)\s*\n((?::[\w-]+:.*\n)*)", re.M)


def included_objects() -> list[tuple[str, Path, str]]:
    """(chapter, source file, object) for every ``{literalinclude}`` with ``:pyobject:``."""
    found = []
    for chapter in sorted((ROOT / "book").glob("*.md")):
        for match in LITERALINCLUDE.finditer(chapter.read_text(encoding="utf-8")):
            options = dict(re.findall(r"^:([\w-]+):\s*(.*?)\s*$", match.group(2), re.M))
            if "pyobject" in options:
                source = (chapter.parent / match.group(1)).resolve()
                found.append((chapter.name, source, options["pyobject"]))
    return found


def object_lines(source: Path, name: str) -> list[str]:
    """The lines of the class, function or ``Class.method`` called `name` (its decorators
    included), with the object's own indentation removed."""
    text = source.read_text(encoding="utf-8")
    body = ast.parse(text).body
    node = None
    for part in name.split("."):
        node = next((child for child in body if isinstance(
            child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and child.name == part), None)
        assert node is not None, f"{source.name} has no {name}"
        body = node.body
    first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
    lines = text.splitlines()[first - 1:node.end_lineno]
    indent = len(lines[0]) - len(lines[0].lstrip())
    return [line[indent:] if line[:indent].strip() == "" else line.lstrip() for line in lines]


def test_the_included_objects_are_found():
    found = {(chapter, name) for chapter, _, name in included_objects()}
    assert {("baseline.md", "BaselineNet"), ("cvae_pyro.md", "CVAE.model"),
            ("interactive.md", "torch_completions")} <= found
    lines = object_lines(ROOT / "cvae_utils" / "networks.py", "CVAE.model")
    assert lines[0].startswith("def model(") or lines[0].startswith("@")


def test_included_code_fits_the_page_width():
    """Every line that a chapter includes with ``:pyobject:`` fits the page's code box."""
    offenders = [f"{chapter} {name} ({len(line)}): {line}"
                 for chapter, source, name in included_objects()
                 for line in object_lines(source, name) if len(line) > PAGE_WIDTH]
    assert not offenders, (f"{len(offenders)} included lines are wider than {PAGE_WIDTH} "
                           "characters:\n" + "\n".join(offenders))
