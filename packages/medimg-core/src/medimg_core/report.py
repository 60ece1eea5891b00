"""A self-contained static HTML report of one or more run folders.

`build_report(run_dir, compare=[...])` writes `report.html` (or `out`): the dataset card, the
metrics with their 95% intervals next to the compared runs (a baseline, say), training curves,
every figure the method wrote (rules, prototype galleries, similarity maps, concept bars, ARR
curves, counterfactual strips) and its text outputs. Images are embedded as base64 data URIs
and no script, style sheet or font is fetched, so the file opens offline and can be mailed.

A run folder is untrusted input: it may come from a colleague's tarball. The page is meant for
sharing, so it embeds only regular files that lie inside the run folder: a symbolic link (to a file
or a folder, anywhere on the way down) is never followed, files are opened with `O_NOFOLLOW`, and
what was left out is listed on the page. The dataset card is rebuilt from structured fields (the
dataset registry, or the data root's `dataset.json` parsed as a card), never copied from a text file
the run folder's config points at.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import stat
from dataclasses import dataclass
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


class RunFolder:
    """Read-only access to the regular files inside one run folder, never through a symbolic link.

    `skipped` collects the relative paths that were left out (links, devices, sockets, ...).
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.skipped: list[str] = []

    def _inside(self, rel: Path) -> bool:
        """True when no component of `rel` below the root is a link and the last one is a regular file."""
        path = self.root
        for i, part in enumerate(rel.parts):
            path = path / part
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                return False
            last = i == len(rel.parts) - 1
            if stat.S_ISLNK(mode) or (last and not stat.S_ISREG(mode)):
                self._skip(rel)
                return False
            if not last and not stat.S_ISDIR(mode):
                return False
        return True

    def _skip(self, rel: Path) -> None:
        if str(rel) not in self.skipped:
            self.skipped.append(str(rel))

    def read_bytes(self, rel: str | Path) -> bytes | None:
        """The file's bytes, or None when it is absent, a link, or not a regular file inside the folder."""
        rel = Path(rel)
        if rel.is_absolute() or ".." in rel.parts or not self._inside(rel):
            return None
        try:
            fd = os.open(self.root / rel, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            self._skip(rel)
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # swapped after the check
                self._skip(rel)
                return None
            return handle.read()

    def read_text(self, rel: str | Path) -> str | None:
        data = self.read_bytes(rel)
        return None if data is None else data.decode("utf-8", errors="replace")

    def files(self) -> list[Path]:
        """Relative paths of every regular file, sorted; linked files and folders are listed in `skipped`."""
        out = []
        for folder, dirs, names in os.walk(self.root, followlinks=False):
            base = Path(folder)
            for name in list(dirs):
                if (base / name).is_symlink():
                    self._skip((base / name).relative_to(self.root))
                    dirs.remove(name)
            for name in names:
                rel = (base / name).relative_to(self.root)
                try:
                    mode = os.lstat(base / name).st_mode
                except OSError:
                    continue
                if stat.S_ISREG(mode):
                    out.append(rel)
                else:
                    self._skip(rel)
        return sorted(out)


def _read_json(folder: RunFolder, rel: str) -> dict:
    text = folder.read_text(rel)
    try:
        value = json.loads(text) if text is not None else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_history(folder: RunFolder, rel: str = "metrics.jsonl") -> list[dict]:
    rows = []
    text = folder.read_text(rel)
    for line in (text or "").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run
        if isinstance(row, dict):
            rows.append(row)
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


def _dataset_card(folder: RunFolder, config: dict) -> str | None:
    """The card as markdown, rebuilt from structured fields: the run's own card.json, the data root's
    dataset.json (a generated or CSV dataset, whose card may differ from the registry's: a custom rule),
    or the registry's card of the named dataset."""
    from medimg_core.data.card import DatasetCard

    own = _read_json(folder, "card.json")
    if own:
        try:
            return DatasetCard.from_dict(own).to_markdown()
        except (TypeError, ValueError):
            pass
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    name, root = data.get("dataset"), data.get("root")
    if not isinstance(name, str):
        return None
    try:
        from medimg_core.data import get_dataset_class
        from medimg_core.data.csv_dataset import CSVDataset
        from medimg_core.synthetic import GENERATORS, card_for

        if isinstance(root, str) and (name in GENERATORS or name == "csv") and Path(root, "dataset.json").is_file():
            try:
                return CSVDataset.card_for(root).to_markdown()
            except Exception:  # an unreadable data root only loses the card
                pass
        if name in GENERATORS:
            return card_for(name).to_markdown()
        return get_dataset_class(name).card.to_markdown()
    except (KeyError, ImportError, ValueError):
        return None


def _run_label(run_dir: Path, metrics: dict) -> str:
    bits = [str(metrics.get(k)) for k in ("method", "dataset", "backbone") if metrics.get(k)]
    return " / ".join(bits) if bits else run_dir.name


def _figures(files: list[Path]) -> list[tuple[str, list[Path]]]:
    """PNG files of the run (relative paths), grouped by the folder they sit in (checkpoints left out)."""
    groups: dict[str, list[Path]] = {}
    for rel in files:
        if rel.suffix != ".png" or rel.parts[0] == "checkpoints" or rel.name.startswith("."):
            continue
        groups.setdefault(str(rel.parent) if rel.parent != Path(".") else "run folder", []).append(rel)
    return list(groups.items())


def _texts(folder: RunFolder, files: list[Path]) -> list[tuple[str, str]]:
    out = []
    for rel in files:
        if rel.suffix not in TEXT_SUFFIXES or rel.name in SKIP_TEXT or rel.parts[0] == "checkpoints":
            continue
        text = folder.read_text(rel)
        if text is None:
            continue
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS] + f"\n... ({len(text) - MAX_TEXT_CHARS} more characters in {rel})"
        out.append((str(rel), text))
    return out


def check_run_folder(path: Path, given: str = "") -> None:
    """A RunFolderError unless `path` is a run folder of some medimg method (it holds metrics.json or
    config.yaml): a report is never written into a dataset folder or any other folder."""
    from medimg_core.runs import RunFolderError

    if not path.is_dir():
        raise RunFolderError(f"{path}: no such run folder{given}")
    if not any(os.path.isfile(path / name) and not os.path.islink(path / name)
               for name in ("metrics.json", "config.yaml")):
        raise RunFolderError(f"{path}: not a run folder{given} (expected the metrics.json or config.yaml that every "
                             "training writes)")


def build_report(run_dir: str | Path, compare: list[str | Path] | tuple = (), out: str | Path | None = None) -> Path:
    """Write a static HTML report of `run_dir` (compared with the runs in `compare`); returns its path.

    The page is written atomically to `out` (default `run_dir/report.html`).
    """
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    compare = [Path(c) for c in compare]
    for other in compare:
        check_run_folder(other, " (given to --compare)")
    folder = RunFolder(run_dir)
    others = [RunFolder(c) for c in compare]
    metrics = _read_json(folder, "metrics.json")
    config_text = folder.read_text("config.yaml")
    try:
        config = yaml.safe_load(config_text) if config_text else {}
    except yaml.YAMLError:
        config = {}
    config = config if isinstance(config, dict) else {}
    label = _run_label(run_dir, metrics)
    runs = [(label, metrics)] + [(_run_label(o.root, _read_json(o, "metrics.json")), _read_json(o, "metrics.json"))
                                 for o in others]
    if len({name for name, _ in runs}) < len(runs):  # same method, dataset and backbone: tell them apart
        runs = [(f"{name} ({d.name})", m) for (name, m), d in zip(runs, [run_dir, *compare], strict=True)]

    body = [f"<h1>{html.escape(label)}</h1>",
            f'<p class="meta">Run folder <code>{html.escape(str(run_dir))}</code>'
            + (f"; compared with {', '.join(f'<code>{html.escape(str(c))}</code>' for c in compare)}" if compare else "")
            + ". Written by <code>medimg report</code>; self-contained, nothing is fetched.</p>"]
    body.append("<h2>Metrics</h2>" + _metrics_table(runs)
                + "<p class='meta'>Brackets: 95% bootstrap intervals over the evaluation set.</p>")

    curves = [(name, _curves_png(_read_history(f))) for name, f in
              zip([r[0] for r in runs], [folder, *others], strict=True)]
    curves = [(n, png) for n, png in curves if png]
    if curves:
        body.append("<h2>Training curves</h2>" + "".join(_img(png, n) for n, png in curves))

    files = folder.files()
    figures = _figures(files)
    if figures:
        body.append("<h2>Figures and explanations</h2>")
        shown = 0
        for group, paths in figures:
            body.append(f"<h3>{html.escape(group)}</h3>")
            for rel in paths:
                if shown >= MAX_FIGURES:
                    break
                png = folder.read_bytes(rel)
                if png is None:
                    continue
                body.append(_img(png, rel.stem.replace("_", " ")))
                shown += 1
        if shown >= MAX_FIGURES:
            body.append(f"<p>Only the first {MAX_FIGURES} figures are shown; the rest are in the run folder.</p>")

    for rel, text in _texts(folder, files):
        body.append(f"<h2>{html.escape(rel)}</h2><pre>{html.escape(text)}</pre>")

    card = _dataset_card(folder, config)
    if card:
        body.append(f"<h2>Dataset card</h2><pre>{html.escape(card)}</pre>")
    if config:
        body.append(f"<h2>Resolved config</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>")
    skipped = [f"{o.root.name}/{s}" if o is not folder else s for o in (folder, *others) for s in o.skipped]
    if skipped:
        body.append("<h2>Left out</h2><p class='meta'>Symbolic links and other non-regular files are never "
                    "followed or embedded:</p><pre>" + html.escape("\n".join(skipped)) + "</pre>")

    return _write_page(_page(label, body), Path(out) if out is not None else run_dir / "report.html")


def _page(title: str, body: list[str]) -> str:
    """A whole HTML page: no script, and nothing fetched (images must be data URIs)."""
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>")


def _write_page(page: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def html_page(title: str, body: list[str]) -> str:
    """A whole self-contained HTML page (no script; images only as data URIs) around `body`, HTML fragments the
    caller has escaped (`html.escape`); `title` is escaped here. The page of `build_report` and `build_index`,
    for other commands that write one (`medimg benchmark`, `neuron-concepts gallery`)."""
    return _page(title, body)


def html_figure(png: bytes, caption: str) -> str:
    """A <figure> embedding PNG bytes as a data URI, its caption escaped. Read the bytes through `RunFolder`
    (or `embedded_figure`) so that only regular files inside a run folder are embedded."""
    return _img(png, caption)


def embedded_figure(folder: str | Path, rel: str | Path, caption: str) -> str | None:
    """An HTML <figure> embedding the PNG `rel` of `folder` as a data URI, with the escaped `caption`; None when
    `rel` is not a regular file inside `folder` (absent, a symbolic link, or outside it): nothing outside the
    folder is ever embedded."""
    png = RunFolder(Path(folder)).read_bytes(rel)
    return None if png is None else html_figure(png, caption)


def write_page(page: str, out: str | Path) -> Path:
    """Write an HTML page atomically (a temporary file, then renamed); returns `out`."""
    return _write_page(page, Path(out))


@dataclass
class IndexEntry:
    """One row of an index page: a run, its headline and its main figure (see `build_index`)."""

    title: str
    explains: str
    headline: str
    seconds: float | None = None
    figure: Path | None = None
    report: Path | None = None
    note: str = ""


def build_index(entries: list[IndexEntry], out: str | Path, title: str, intro: list[str] = ()) -> Path:
    """Write one self-contained HTML page over several runs: a summary table (title, what the method explains,
    its headline, wall time, a link to each run's report) and each entry's main figure, embedded.

    Links are relative to the page's folder, so the folder can be moved or zipped whole. A figure is embedded
    only if it is a regular file (a symbolic link is refused, as in `build_report`); a missing one is named on
    the page instead. `intro`: paragraphs of plain text shown under the title.
    """
    out = Path(out)
    base = out.parent.resolve()

    def link(path: Path | None) -> str:
        if path is None or not Path(path).is_file():
            return "&ndash;"
        rel = os.path.relpath(Path(path).resolve(), base)
        return f'<a href="{html.escape(Path(rel).as_posix())}">report</a>'

    rows = "".join(
        f"<tr><td>{html.escape(e.title)}</td><td>{html.escape(e.explains)}</td><td>{html.escape(e.headline)}</td>"
        f"<td class='num'>{'' if e.seconds is None else f'{e.seconds:.0f} s'}</td><td>{link(e.report)}</td></tr>"
        for e in entries)
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(p)}</p>" for p in intro),
            "<table><tr><th>method</th><th>what it explains</th><th>headline</th><th>time</th><th>run</th></tr>"
            f"{rows}</table>"]
    for e in entries:
        body.append(f"<h2>{html.escape(e.title)}</h2>")
        if e.note:
            body.append(f"<p class='meta'>{html.escape(e.note)}</p>")
        png = RunFolder(Path(e.figure).parent).read_bytes(Path(e.figure).name) if e.figure is not None else None
        if png is not None:
            body.append(_img(png, Path(e.figure).name))
        else:
            body.append(f"<p>No figure{'' if e.figure is None else f' ({html.escape(str(e.figure))} is missing)'}.</p>")
    return _write_page(_page(title, body), out)
