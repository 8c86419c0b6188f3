"""The run page's field section (a run trained with ``edgeclf train --add DIR``, or ``--compare RUN``): top-1 on
the original validation split and on the field validation set, the previous model's figures on the same images
with the deltas, and the field validation images the model still gets wrong, as thumbnails. Read from
``report.json`` and ``field_val_predictions.csv`` alone."""
from __future__ import annotations

from pathlib import Path

from edgeclf.page import thumbs
from edgeclf.page.html import esc, figure, paragraph, table

SECTION = "field"


def _pct(x) -> str:
    return f"{x:.2%}" if isinstance(x, (int, float)) else "-"


def _pt(x) -> str:
    return f"{100 * x:+.1f} pt" if isinstance(x, (int, float)) else "-"


def wanted(rep: dict | None) -> bool:
    return bool(rep and (rep.get("field") or rep.get("compare")))


def section(run_dir: Path, rep: dict, max_thumbs: int = 120) -> tuple[str, str, str]:
    from edgeclf.train.field_eval import read_field_predictions
    from edgeclf.train.report import field_lines

    field, fv, cmp_ = rep.get("field") or {}, rep.get("field_val") or {}, rep.get("compare") or {}
    body = [paragraph(line) for line in field_lines(rep)]
    if field.get("dirs"):
        body.append(paragraph("field folders: " + ", ".join(field["dirs"]), "muted"))
    previous = Path(cmp_["run"]).name if cmp_.get("run") else None
    header = ["images", "this run"] + ([f"previous ({previous})", "change"] if previous else [])
    rows = [["original validation split", _pct(rep.get("top1"))]
            + ([_pct(cmp_.get("val_top1")), _pt(cmp_.get("val_top1_delta"))] if previous else [])]
    if fv:
        rows.append(["field validation set", _pct(fv.get("top1"))]
                    + ([_pct(cmp_.get("field_val_top1")), _pt(cmp_.get("field_val_top1_delta"))] if previous else []))
    body.append(table(header, rows, "field-figures"))
    if previous and not cmp_.get("same_val_images", True):
        body.append(paragraph(f"{previous}'s validation images are not this run's: its validation top-1 is "
                              f"on other photos.", "muted"))
    if cmp_.get("field_val_trained_on"):
        body.append(paragraph(f"{previous} trained on {cmp_['field_val_trained_on']} of these field validation "
                              f"images: its figure on them flatters it.", "muted"))
    preds = read_field_predictions(run_dir)
    wrong = sorted((r for r in preds if r["true"] != r["predicted"]), key=lambda r: -r["score"])
    if not fv:
        body.append(paragraph("no field validation set (--field-val 0, or no --add)", "muted"))
        return SECTION, "Field images", "".join(body)
    shown = wrong[:max_thumbs]
    body.append(f"<h3>field validation images still wrong ({len(wrong)} of {len(preds)})</h3>")
    if not wrong:
        body.append(paragraph("none: every field validation image is answered right", "muted"))
    body.append('<div class="gallery">')
    cache: dict = {}
    for r in shown:
        prev = r.get("previous")
        caption = (f'<b>{esc(Path(r["file"]).name)}</b><br>true {esc(r["true"])} ({r["true_score"]:.2f})<br>'
                   f'<span class="bad">predicted {esc(r["predicted"])} {r["score"]:.2f}</span>'
                   + (f'<br><span class="{"good" if prev == r["true"] else "bad"}">previous {esc(prev)} '
                      f'{r["previous_score"]:.2f}</span>' if prev else ""))
        body.append(figure(thumbs.photo(r["file"], cache), caption,
                           {"file": r["file"], "true": r["true"], "pred": r["predicted"],
                            "score": f'{r["score"]:.4f}', "previous": prev or None}, "field-mistake"))
    body.append("</div>")
    return SECTION, "Field images", "".join(body)
