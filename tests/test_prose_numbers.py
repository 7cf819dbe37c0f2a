"""No number typed in a chapter's prose: a number that a configuration or a run decides is glued
(``{glue:text}``), so that the page says what the build computed. The checker reads the markdown
cells of every chapter (through jupytext), strips what is not prose (maths, roles, inline code,
directive options, code blocks, labels, links) and reports every digit, and every number word
such as "hundred", that the short allow-list below does not excuse.

The allow-list, and why each entry is not a number a run or a configuration decides:

- years (1990-2029): the dates of citations and of the paper;
- "Chapter 3", "Figure 2", "Table 1", "Section 4.2", "equation (5)", "Algorithm 1": references to
  the paper's and the book's own numbered parts;
- the image's size, the task's definition: 28×28 (also 28 × 28, 28x28 and the array shapes
  (28, 28) and (N, 28, 28)), 784 pixels, and the quadrants of 14×14 = 196 pixels;
- "1, 2 and 3" or "k = 1/2/3" input quadrants: the three settings the paper defines;
- a digit's class: "a 3", "an 8", "as a 9" (the label, not a quantity);
- 0 and 1 on their own: the ends of a probability's, a pixel's or a weight's range.
"""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"

ALLOWED = [
    r"\b(?:19[9]\d|20[0-2]\d)\b",                                   # years
    r"\b(?:Chapters?|Figures?|Fig\.|Tables?|Sections?|Algorithms?|[Ee]quations?|Eq\.)"
    r"\s+\(?\d+(?:\.\d+)*\)?(?:(?:,\s*|\s+and\s+|\s*[-–]\s*)\(?\d+(?:\.\d+)*\)?)*",
    r"\b28\s*[×x]\s*28\b", r"\b14\s*[×x]\s*14\b", r"\b784\b",          # the image and quadrants
    r"\((?:N,\s*)?28,\s*28\)", r"\b196\b",
    r"\bk\s*=\s*[123](?:\s*(?:,|/|and|or)\s*[123])*\b",               # the three settings
    r"\b[123](?:,\s*[123])*,?\s+(?:and|or)\s+[123]\s+input quadrants?\b",
    r"\b(?:an?|the|digit|class|as)\s+\d\b(?![.,]\d)",                 # a digit class: "a 3"
    r"(?<![\d.,])\b[01]\b(?![.,]\d)",                                 # the ends of [0, 1]
]
NUMBER = re.compile(r"(?<![A-Za-z_.\d])\d+(?:[.,]\d+)*(?![A-Za-z_])|\b(?:hundreds?|thousands?|millions?|billions?|dozens?"
                    r"|hundredths?|thousandths?)\b", re.I)

# what is not prose: each is removed (replaced by a space) before digits are looked for
NOT_PROSE = [
    r"\$\$.*?\$\$",                       # display maths
    r"(?<!\\)\$(?:\\\$|[^$])+?(?<!\\)\$",  # inline maths
    r"\{[\w:-]+\}`[^`]*`",                # roles: {glue:text}`x`, {numref}`...`, {eq}`...`
    r"``[^`]*``|`[^`]*`",                 # inline code
    r"\]\([^)]*\)",                       # link targets
    r"https?://\S+",                      # bare URLs
    r"<!--.*?-->",                        # comments
    r"\[\^[^\]]*\]",                      # footnote references
]
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\{[\w:-]+\})?\s*(.*)$")
PROSE_DIRECTIVES = {"{exercise}", "{solution-start}", "{note}", "{tip}", "{warning}",
                    "{admonition}", "{important}", "{hint}", "{seealso}", "{attention}",
                    "{caution}", "{margin}", "{sidebar}", "{epigraph}", "{dropdown}",
                    "{figure}"}


def prose_lines(markdown: str):
    """(line offset, text) for each line of a markdown cell that is prose. Code blocks, maths
    blocks and directives that hold no prose are skipped; so are directive options and labels."""
    fences: list[tuple[str, bool]] = []   # open fences: (marker, holds prose)
    in_options = False
    for offset, line in enumerate(markdown.split("\n")):
        match = FENCE.match(line.strip())
        if match and fences and line.strip() == fences[-1][0]:
            fences.pop()
            continue
        if match and (match.group(2) or match.group(3) or not fences or not fences[-1][1]):
            marker, directive = match.group(1), match.group(2)
            fences.append((marker, directive in PROSE_DIRECTIVES))
            in_options = True
            if directive in PROSE_DIRECTIVES:   # a title is prose
                yield offset, match.group(3)
            continue
        if fences and not fences[-1][1]:
            continue
        if in_options and (line.startswith(":") or not line.strip()):
            in_options = bool(line.strip())
            continue
        in_options = False
        if re.match(r"^\s*\(\S+\)=\s*$", line) or re.match(r"^\s*\[[^\]]+\]:\s", line):
            continue
        yield offset, line


def typed_numbers(text: str) -> list[tuple[int, str, str]]:
    """(line, number, line text) of every number the prose of a chapter types outside the
    allow-list; ``text`` is the chapter's source."""
    notebook = jupytext.reads(text, fmt="md:myst")
    found, position = [], 0
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        start = text.find(cell.source, position)
        if start < 0:   # jupytext normalises a few things; fall back to the cell's first line
            start = text.find(cell.source.split("\n", 1)[0], position)
        position = max(start, position)
        first_line = text.count("\n", 0, max(start, 0)) + 1
        lines = list(prose_lines(cell.source))
        # maths blocks span lines: strip them over the joined cell, keeping the line breaks
        joined = "\n".join(line for _, line in lines)
        for pattern in NOT_PROSE[:1]:
            joined = re.sub(pattern, lambda m: re.sub(r"[^\n]", " ", m.group()), joined,
                            flags=re.S)
        for (offset, original), line in zip(lines, joined.split("\n")):
            for pattern in NOT_PROSE[1:]:
                line = re.sub(pattern, " ", line)
            for pattern in ALLOWED:
                line = re.sub(pattern, " ", line)
            for number in NUMBER.finditer(line):
                found.append((first_line + offset, number.group(), original.strip()))
    return found


def chapters() -> list[Path]:
    return sorted(path for path in BOOK.glob("*.md"))


@pytest.mark.parametrize("chapter", chapters(), ids=lambda path: path.name)
def test_no_number_is_typed_in_prose(chapter: Path):
    found = typed_numbers(chapter.read_text(encoding="utf-8"))
    report = "\n".join(f"{chapter.name}:{line}: {number!r} in: {text}"
                       for line, number, text in found)
    assert not found, "numbers typed in prose (glue them, or allow-list a definition):\n" + report


SYNTHETIC = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

(synthetic)=
# A chapter

The model has {glue:text}`z_dim` latent dimensions, $\\sigma(g(x, z))$ in 2015's paper,
as equation (4) and {numref}`Chapter %s <data>` say, on 28×28 images with k = 1, 2 or 3.

```{code-cell} ipython3
z_dim = 200
```

Training took 37 epochs, and the estimator draws a hundred samples.

```{exercise} Count to 3
:label: ex-count

Use `num_samples=100` and $K = 5000$.
```
"""


def test_the_checker_reports_a_typed_number():
    found = typed_numbers(SYNTHETIC)
    assert [number for _, number, _ in found] == ["37", "hundred", "3"], found
    lines = SYNTHETIC.split("\n")
    assert all(number in lines[line - 1] for line, number, _ in found), found


def test_the_checker_passes_glued_numbers():
    glued = SYNTHETIC.replace("took 37 epochs", "took {glue:text}`epochs` epochs")
    glued = glued.replace("a hundred samples", "{glue:text}`samples` samples")
    glued = glued.replace("Count to 3", "Count")
    assert typed_numbers(glued) == []
