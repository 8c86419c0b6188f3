"""Small HTML pieces for the run page: escaped text, tables, figures, sections, and the page around them.
Plain HTML and inline CSS: no script, no font or style from the network."""
from __future__ import annotations

import html

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d1d9}nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #d8dee4;
padding:8px 24px;z-index:1}nav a{margin-right:14px;color:#0b62d6;text-decoration:none}
main{padding:8px 24px 40px;max-width:1400px}section{background:#fff;border:1px solid #d8dee4;border-radius:6px;
margin:16px 0;padding:12px 18px}h2{font-size:17px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}th,td{border:1px solid #d8dee4;padding:3px 8px;
text-align:right;white-space:nowrap}th{background:#f0f3f6}td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:normal}img.plot{max-width:100%;height:auto}
.gallery{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:150px;font-size:12px;background:#fafbfc;
border:1px solid #d8dee4;border-radius:4px;padding:4px}figure img{display:block;width:128px;height:128px;
object-fit:contain;margin:0 auto;background:#eee}figcaption{margin-top:3px}figcaption b{word-break:break-all}
.bad{color:#b42318;font-weight:600}.good{color:#067647;font-weight:600}.muted{color:#667085}.note{color:#667085}
.missing{display:flex;align-items:center;justify-content:center;width:128px;height:128px;background:#eee}
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def attrs(values: dict) -> str:
    return "".join(f' {k}="{esc(v)}"' for k, v in values.items() if v is not None)


def table(header: list[str], cells: list[list], cls: str = "", text_columns: tuple[int, ...] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=text" if i in text_columns else ""}>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in cells)
    return f'<table{attrs({"class": cls or None})}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def image(uri: str | None, alt: str, cls: str = "plot") -> str:
    if not uri:
        return f'<p class="muted">({esc(alt)}: none)</p>'
    return f'<img class="{cls}" src="{esc(uri)}" alt="{esc(alt)}">'


def figure(uri: str | None, caption: str, data: dict, cls: str) -> str:
    """A thumbnail with its caption (already HTML); ``data`` becomes data-* attributes a reader or a test reads."""
    pic = f'<img src="{esc(uri)}" alt="{esc(data.get("file", ""))}">' if uri else \
        '<div class="missing">unreadable</div>'
    return f'<figure{attrs({"class": cls, **{f"data-{k}": v for k, v in data.items()}})}>{pic}' \
           f"<figcaption>{caption}</figcaption></figure>"


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def paragraph(text: str, cls: str = "") -> str:
    return f'<p{attrs({"class": cls or None})}>{esc(text)}</p>'


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are (id, title, body HTML)."""
    nav = "".join(f'<a href="#{esc(sid)}">{esc(t)}</a>' for sid, t, _ in sections)
    body = "".join(section(sid, t, b) for sid, t, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>'
            f"<body><header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main></body></html>\n")
