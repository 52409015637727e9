"""Reports as a small document model rendered twice: Markdown and one self-contained HTML file.

The HTML embeds its figures as base64 PNG data URIs and its style inline: no scripts, no fonts, no external
assets, so it opens offline and can be mailed as one file. The Markdown links the same PNGs, written to a
``figures/`` folder beside it. Every report opens with :data:`covidxray.NOT_FOR_CLINICAL_USE`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from covidxray.about import NOT_FOR_CLINICAL_USE, __version__

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warning{background:#fff4e5;border-left:5px solid #e67700;padding:.6em .9em;margin:.8em 0}
.notice{background:#fdecea;border-left:5px solid #c62828;padding:.6em .9em;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:.85em;color:#555;text-align:center}
footer{margin-top:3em;font-size:.8em;color:#777}
"""
_NUMERIC = re.compile(r"^[-+]?\d*\.?\d+(e[-+]?\d+)?( \[[^\]]*\])?$")


@dataclass
class Figure:
    name: str  # file stem, e.g. "roc_overall"
    png: bytes
    caption: str


@dataclass
class _Block:
    kind: str  # heading | paragraph | warning | table | figures
    text: str = ""
    level: int = 2
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


class Report:
    """Build with ``heading / paragraph / warning / table / figures``, then :meth:`write`."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(_Block("heading", text, level=level))

    def paragraph(self, text: str) -> None:
        self.blocks.append(_Block("paragraph", text))

    def warning(self, text: str) -> None:
        self.blocks.append(_Block("warning", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(
            _Block("table", headers=[str(h) for h in headers], rows=[[str(c) for c in r] for r in rows])
        )

    def figures(self, figures: Sequence[Figure]) -> None:
        if figures:
            self.blocks.append(_Block("figures", figures=list(figures)))

    # -- rendering ------------------------------------------------------------------------------------------
    def to_markdown(self, figure_dir: str = "figures") -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")

        out = [f"# {self.title}", "", f"> **{NOT_FOR_CLINICAL_USE}**", ""]
        for b in self.blocks:
            if b.kind == "heading":
                out += ["#" * b.level + " " + b.text, ""]
            elif b.kind == "paragraph":
                out += [b.text, ""]
            elif b.kind == "warning":
                out += [f"> **WARNING:** {b.text}", ""]
            elif b.kind == "table":
                out.append("| " + " | ".join(cell(h) for h in b.headers) + " |")
                out.append("|" + "|".join("---" for _ in b.headers) + "|")
                out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in b.rows]
                out.append("")
            elif b.kind == "figures":
                out += [f"![{f.caption}]({figure_dir}/{f.name}.png)" for f in b.figures]
                out.append("")
        out += ["---", f"covidxray {__version__}. {NOT_FOR_CLINICAL_USE}", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>", f'<p class="notice">{e(NOT_FOR_CLINICAL_USE)}</p>']
        for b in self.blocks:
            if b.kind == "heading":
                level = min(max(b.level, 2), 4)
                body.append(f"<h{level}>{e(b.text)}</h{level}>")
            elif b.kind == "paragraph":
                body.append(f"<p>{e(b.text)}</p>")
            elif b.kind == "warning":
                body.append(f'<div class="warning"><strong>WARNING:</strong> {e(b.text)}</div>')
            elif b.kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
                rows = "".join(
                    "<tr>"
                    + "".join(
                        f'<td class="num">{e(c)}</td>' if _NUMERIC.match(c) else f"<td>{e(c)}</td>" for c in r
                    )
                    + "</tr>"
                    for r in b.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b.kind == "figures":
                figs = "".join(
                    f'<figure><img alt="{e(f.caption)}" src="data:image/png;base64,'
                    f'{base64.b64encode(f.png).decode("ascii")}"><figcaption>{e(f.caption)}</figcaption></figure>'
                    for f in b.figures
                )
                body.append(f'<div class="figs">{figs}</div>')
        body.append(f"<footer>covidxray {e(__version__)}. {e(NOT_FOR_CLINICAL_USE)}</footer>")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(self.title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body)
            + "\n</body></html>\n"
        )

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write ``<stem>.md`` (+ ``figures/*.png``) and the self-contained ``<stem>.html``."""
        out = Path(out_dir)
        fig_dir = out / "figures"
        for b in self.blocks:
            for f in b.figures:
                fig_dir.mkdir(parents=True, exist_ok=True)
                (fig_dir / f"{f.name}.png").write_bytes(f.png)
        md, page = out / f"{stem}.md", out / f"{stem}.html"
        md.write_text(self.to_markdown("figures"))
        page.write_text(self.to_html())
        return md, page


def fmt(value: float | None, ci: Sequence[float] | None = None, digits: int = 3) -> str:
    """``0.912 [0.870, 0.950]``; ``n/a`` for an undefined value."""
    if value is None:
        return "n/a"
    s = f"{value:.{digits}f}"
    if ci:
        s += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return s
