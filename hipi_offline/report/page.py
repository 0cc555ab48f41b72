"""One self-contained HTML page: inline CSS, figures as embedded PNGs, no outside links.

The page carries a generator tag (:data:`GENERATOR`) by which ``report --overwrite``
knows a file it may replace, and a few lines of script that record, once the page has
loaded, how many of its images decoded (``<html data-images-decoded="M/N">``): a check
for a browser or a test, nothing the reader needs.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GENERATOR = "hipi-offline report 1"
MARKER = f'<meta name="generator" content="{GENERATOR}">'
MARKER_BYTES = 2048
"""The marker lies within this many bytes of the start of a report."""

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; }
table.facts td { padding: 0.1em 1.2em 0.1em 0; vertical-align: top; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
ul.summary li { margin: 0.3em 0; }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = document.images, ok = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) { ok++; }
  }
  document.documentElement.dataset.imagesDecoded = ok + "/" + images.length;
});
"""


def png_data_uri(figure: Figure, dpi: int = 110) -> str:
    """The figure as a base64 PNG data URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Section:
    """A heading, paragraphs (plain text, escaped), bullet points and figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (data URI, caption)

    def add_figure(self, figure: Figure, caption: str) -> None:
        self.figures.append((png_data_uri(figure), caption))

    def html(self) -> str:
        parts = [f"<h2>{html.escape(self.title)}</h2>"]
        parts += [f"<p>{html.escape(text)}</p>" for text in self.paragraphs]
        if self.bullets:
            items = "".join(f"<li>{html.escape(text)}</li>" for text in self.bullets)
            parts.append(f'<ul class="summary">{items}</ul>')
        for uri, caption in self.figures:
            alt = html.escape(caption, quote=True)
            parts.append(
                f'<figure><img src="{uri}" alt="{alt}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        return "\n".join(parts)


def render(title: str, facts: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """The whole page."""
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(value)}</td></tr>" for key, value in facts
    )
    body = "\n".join(section.html() for section in sections)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">{MARKER}\n'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
        f"<script>{CHECK_IMAGES}</script></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n"
        f'<table class="facts">{rows}</table>\n{body}\n</body></html>\n'
    )


def is_report(path: Path) -> bool:
    """Whether ``path`` is a regular file that this command wrote (its marker near
    the start); a link or anything else is not."""
    try:
        if path.is_symlink() or not path.is_file():
            return False
        with open(path, "rb") as f:
            head = f.read(MARKER_BYTES)
    except OSError:
        return False
    return MARKER.encode() in head
