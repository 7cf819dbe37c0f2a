"""The exercises of the book: every chapter has some, every solution is gated and checks itself,
and the "Exercises" page lists all of them (chapter order, by label). Reads the MyST sources
only; running the solutions is the job of ``pytest --nbval book/`` and the book build."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

BOOK = Path(__file__).resolve().parents[1] / "book"
EXERCISE = re.compile(r"^```\{exercise\}[^\n]*\n:label: (\S+)", re.M)
TITLED = re.compile(r"^```\{exercise\} ([^\n]*)\n:label: (\S+)", re.M)
SOLUTION_START = re.compile(r"^```\{solution-start\} (\S+)\n((?::[^\n]*\n)*)```", re.M)
# the page's links carry the exercise's title as their text (sphinx-exercise's numref has no
# {name}), written without the $ of inline maths, which a link text does not render
LISTED = re.compile(r"\{numref\}`Exercise \{number\}: ([^`<]+) <(ex-[^>`]+)>`")


def chapters() -> list[str]:
    """The numbered chapters of the table of contents, in order (the introduction is the root)."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    numbered = next(part for part in toc["parts"] if part.get("numbered"))
    return [entry["file"] for entry in numbered["chapters"]]


def solutions(text: str) -> dict[str, str]:
    """Each solution's body, from its ``solution-start`` to its ``solution-end``, by exercise."""
    bodies = {}
    for match in SOLUTION_START.finditer(text):
        end = text.find("```{solution-end}", match.end())
        assert end > 0, f"solution of {match.group(1)} has no solution-end"
        bodies[match.group(1)] = (match.group(2), text[match.end():end])
    return bodies


@pytest.mark.parametrize("chapter", chapters())
def test_every_chapter_has_gated_self_checking_exercises(chapter):
    text = (BOOK / f"{chapter}.md").read_text(encoding="utf-8")
    labels = EXERCISE.findall(text)
    assert 2 <= len(labels) <= 4, f"{chapter}: {len(labels)} exercises, expected 2 to 4"
    exercises_section = text.index("\n## Exercises\n")
    assert all(text.index(f":label: {label}") > exercises_section for label in labels)
    bodies = solutions(text)
    assert list(bodies) == labels, f"{chapter}: one solution per exercise, in order"
    for label, (options, body) in bodies.items():
        assert ":class: dropdown" in options, f"{label}: the solution must start closed"
        assert "```{code-cell} ipython3\n" in body, f"{label}: the solution runs no code"
        checks = [cell for cell in body.split("```{code-cell} ipython3\n")[1:]
                  if cell.startswith(":tags: [remove-cell]") and "assert " in cell]
        assert checks, f"{label}: no hidden cell asserts the solution's claim"
    assert text.count("```{solution-start}") == text.count("```{solution-end}")


def test_exercises_page_lists_every_exercise_in_chapter_order():
    in_chapters = [(title.replace("$", ""), label) for chapter in chapters()
                   for title, label in TITLED.findall((BOOK / f"{chapter}.md").read_text("utf-8"))]
    listed = LISTED.findall((BOOK / "exercises.md").read_text(encoding="utf-8"))
    assert listed == in_chapters, "book/exercises.md must list every exercise, titled, in order"
    labels = [label for _, label in in_chapters]
    assert len(set(labels)) == len(labels), "exercise labels must be unique"


def test_exercises_page_is_in_the_back_matter():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text(encoding="utf-8"))
    back = next(part for part in toc["parts"] if part.get("caption") == "Back matter")
    assert {"file": "exercises"} in back["chapters"]
    config = yaml.safe_load((BOOK / "_config.yml").read_text(encoding="utf-8"))
    assert "sphinx_exercise" in config["sphinx"]["extra_extensions"]
