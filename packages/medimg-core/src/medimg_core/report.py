"""A self-contained static HTML report of one or more run folders.

`build_report(run_dir, compare=[...])` writes `report.html` (or `out`): the dataset card, the
metrics with their 95% intervals next to the compared runs (a baseline, say), training curves,
every figure the method wrote (rules, prototype galleries, similarity maps, concept bars, ARR
curves, counterfactual strips) and its text outputs. Images are embedded as base64 data URIs
and no script, style sheet or font is fetched, so the file opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path

import yaml

#: text outputs worth showing; log.txt and checkpoint READMEs are left out
TEXT_SUFFIXES = (".txt", ".md")
SKIP_TEXT = {"log.txt"}
MAX_TEXT_CHARS = 20_000
MAX_FIGURES = 200

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.6em;vertical-align:top;max-width:100%}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em;border:1px solid #eee}
.meta{color:#666;font-size:.9em}
"""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _read_history(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run
    return rows


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, caption: str) -> str:
    return (f'<figure><img src="{_data_uri(png)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return html.escape(str(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return html.escape(str(value))


def _with_ci(metrics: dict, key: str) -> str:
    if key not in metrics:
        return "&ndash;"
    value = metrics.get(key)
    interval = metrics.get(f"{key}_ci")
    if isinstance(value, float) and isinstance(interval, list) and len(interval) == 2 and None not in interval:
        return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"
    return _fmt(value)


def _scalar_sections(metrics: dict) -> dict[str, dict]:
    """{section: {metric: value}} for every dict of numbers in metrics.json (test, val, test_concepts ...),
    plus "run" for the top-level numbers (wall time, epochs ...)."""
    sections: dict[str, dict] = {"run": {}}
    for key, value in metrics.items():
        if isinstance(value, dict):
            numbers = {k: v for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if numbers:
                sections[key] = value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            sections["run"][key] = value
    return {k: v for k, v in sections.items() if v}


def _metrics_table(runs: list[tuple[str, dict]]) -> str:
    """One table per section; one column per run (the report's run first)."""
    parts = []
    per_run = [(name, _scalar_sections(m)) for name, m in runs]
    section_names = list(dict.fromkeys(s for _, secs in per_run for s in secs))
    for section in section_names:
        keys = list(dict.fromkeys(
            k for _, secs in per_run for k, v in secs.get(section, {}).items()
            if not k.endswith("_ci") and isinstance(v, int | float) and not isinstance(v, bool)))
        if not keys:
            continue
        head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in per_run)
        rows = []
        for key in keys:
            cells = "".join(f'<td class="num">{_with_ci(secs.get(section, {}), key)}</td>' for _, secs in per_run)
            rows.append(f"<tr><td>{html.escape(key)}</td>{cells}</tr>")
        parts.append(f"<h3>{html.escape(section)}</h3><table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>")
    return "".join(parts) or "<p>No metrics.json in this run folder.</p>"


def _curves_png(history: list[dict]) -> bytes | None:
    from medimg_core.figures import training_curves

    if not history:
        return None
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = training_curves(history, Path(tmp) / "curves.png")
        except ValueError:
            return None
        return path.read_bytes()


def _dataset_card(config: dict) -> str | None:
    data = config.get("data") or {}
    name, root = data.get("dataset"), data.get("root")
    if root and Path(str(root), "card.md").is_file():
        return Path(str(root), "card.md").read_text()[:MAX_TEXT_CHARS]
    if not name:
        return None
    try:
        from medimg_core.data import get_dataset_class
        from medimg_core.synthetic import GENERATORS, card_for

        if name in GENERATORS:
            return card_for(name).to_markdown()
        return get_dataset_class(name).card.to_markdown()
    except (KeyError, ImportError, ValueError):
        return None


def _run_label(run_dir: Path, metrics: dict) -> str:
    bits = [str(metrics.get(k)) for k in ("method", "dataset", "backbone") if metrics.get(k)]
    return " / ".join(bits) if bits else run_dir.name


def _figures(run_dir: Path) -> list[tuple[str, list[Path]]]:
    """PNG files of the run, grouped by the folder they sit in (checkpoints left out)."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(run_dir.rglob("*.png")):
        rel = path.relative_to(run_dir)
        if rel.parts[0] == "checkpoints" or path.name.startswith("."):
            continue
        groups.setdefault(str(rel.parent) if rel.parent != Path(".") else "run folder", []).append(path)
    return list(groups.items())


def _texts(run_dir: Path) -> list[tuple[str, str]]:
    out = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if (not path.is_file() or path.suffix not in TEXT_SUFFIXES or path.name in SKIP_TEXT
                or rel.parts[0] == "checkpoints"):
            continue
        text = path.read_text(errors="replace")
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS] + f"\n... ({len(text) - MAX_TEXT_CHARS} more characters in {rel})"
        out.append((str(rel), text))
    return out


def build_report(run_dir: str | Path, compare: list[str | Path] | tuple = (), out: str | Path | None = None) -> Path:
    """Write a static HTML report of `run_dir` (compared with the runs in `compare`); returns its path.

    The page is written atomically to `out` (default `run_dir/report.html`).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run folder")
    compare = [Path(c) for c in compare]
    for other in compare:
        if not other.is_dir():
            raise FileNotFoundError(f"{other}: not a run folder (given to --compare)")
    metrics = _read_json(run_dir / "metrics.json")
    config = {}
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    label = _run_label(run_dir, metrics)
    runs = [(label, metrics)] + [(_run_label(c, _read_json(c / "metrics.json")), _read_json(c / "metrics.json"))
                                 for c in compare]
    if len({name for name, _ in runs}) < len(runs):  # same method, dataset and backbone: tell them apart
        runs = [(f"{name} ({d.name})", m) for (name, m), d in zip(runs, [run_dir, *compare], strict=True)]

    body = [f"<h1>{html.escape(label)}</h1>",
            f'<p class="meta">Run folder <code>{html.escape(str(run_dir))}</code>'
            + (f"; compared with {', '.join(f'<code>{html.escape(str(c))}</code>' for c in compare)}" if compare else "")
            + ". Written by <code>medimg report</code>; self-contained, nothing is fetched.</p>"]
    body.append("<h2>Metrics</h2>" + _metrics_table(runs)
                + "<p class='meta'>Brackets: 95% bootstrap intervals over the evaluation set.</p>")

    curves = [(name, _curves_png(_read_history(d / "metrics.jsonl"))) for name, d in
              zip([r[0] for r in runs], [run_dir, *compare], strict=True)]
    curves = [(n, png) for n, png in curves if png]
    if curves:
        body.append("<h2>Training curves</h2>" + "".join(_img(png, n) for n, png in curves))

    figures = _figures(run_dir)
    if figures:
        body.append("<h2>Figures and explanations</h2>")
        shown = 0
        for group, paths in figures:
            body.append(f"<h3>{html.escape(group)}</h3>")
            for path in paths:
                if shown >= MAX_FIGURES:
                    break
                body.append(_img(path.read_bytes(), path.stem.replace("_", " ")))
                shown += 1
        if shown >= MAX_FIGURES:
            body.append(f"<p>Only the first {MAX_FIGURES} figures are shown; the rest are in the run folder.</p>")

    for rel, text in _texts(run_dir):
        body.append(f"<h2>{html.escape(rel)}</h2><pre>{html.escape(text)}</pre>")

    card = _dataset_card(config)
    if card:
        body.append(f"<h2>Dataset card</h2><pre>{html.escape(card)}</pre>")
    if config:
        body.append(f"<h2>Resolved config</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(label)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>")
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
