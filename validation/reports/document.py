"""A report as a list of blocks, rendered to Markdown (figures as sibling PNG files) or self-contained HTML.

Both renderings come from the same blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Verdict:
    passed: bool
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    name: str  # file-name part: `<stem>_<name>.png`
    caption: str
    png: bytes


@dataclass(frozen=True)
class Code:
    text: str


Block = Union[Heading, Paragraph, Verdict, Bullets, Table, Figure, Code]  # noqa: UP007 (a runtime alias)


# Where `<` opens raw HTML in Markdown (a tag, a closing tag, a comment, a declaration): image names and labels
# come from strangers, and code hosts render the .md pages. `<=` and `< 1e-3` stay as they are.
_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(text: str) -> str:
    """Text as Markdown shows it literally: no raw HTML, no links, one line."""
    text = _HTML_START.sub("&lt;", text.replace("\r", " ").replace("\n", " "))
    return text.replace("[", "\\[").replace("]", "\\]")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|")


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so that the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(blocks: list[Block], stem: str) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {_md_text(block.text)}")
        elif isinstance(block, Paragraph):
            out.append(_md_text(block.text))
        elif isinstance(block, Verdict):
            out.append(f"**{'PASS' if block.passed else 'FAIL'}**: {_md_text(block.text)}")
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {_md_text(item)}" for item in block.items))
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(map(_md_cell, block.header)) + " |", "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Figure):
            caption = _md_text(block.caption)
            out.append(f"![{caption}]({stem}_{block.name}.png)\n\n*{caption}*")
        elif isinstance(block, Code):
            fence = _fence(block.text)
            out.append(f"{fence}\n{block.text}\n{fence}")
    return "\n\n".join(out) + "\n"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td { font-variant-numeric: tabular-nums; }
.verdict { padding: 0.5em 0.8em; margin: 0.4em 0; border-radius: 4px; }
.pass { background: #e6f4ea; border-left: 5px solid #1e8e3e; }
.fail { background: #fce8e6; border-left: 5px solid #d93025; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG data URIs."""
    esc = html.escape
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{esc(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, Verdict):
            kind = "pass" if block.passed else "fail"
            body.append(f'<div class="verdict {kind}"><b>{kind.upper()}</b>: {esc(block.text)}</div>')
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Figure):
            data = base64.b64encode(block.png).decode("ascii")
            body.append(
                f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            body.append(f"<pre>{esc(block.text)}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
