"""``distilset report``: one self-contained HTML page that shows what sets are and how well they do.

``report(dirs, out)`` writes a single static file (pictures inlined as PNG data, plots as inline SVG, no
script and no network access when opened) with:

- a comparison table across the given directories: method, dataset, items, the latest evaluation under the
  set's own recipe and under DC's standard protocol, each beside random real images of the same size trained
  by that same recipe on that same net, where one of the directories is such a baseline (``distilset baseline
  random --like DIR``, evaluated) and has an evaluation of exactly that recipe and net: a cell never compares
  runs of different recipes; and DD-Ranking's LRS and ARS where recorded (``evaluate --scores --save``);
- per set: its picture (texture sets: the tiled canvas), the resolved config, why each automatic value was
  chosen, the training recipe, the learning curves from ``history.json`` (each metric in its own panel, black
  lines, so the plots read without colour), and every evaluation recorded beside it (``evaluate --save``,
  ``distill --evaluate R``): net, protocol, recipe, mean ± std and the single runs.

``results_page(path)`` renders a benchmark's JSON rows (``benchmarks/results/*.json``) in the same style.
Every text taken from a set or a file is escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distilset.errors import DistilsetError
from distilset.evaluate import load_evaluations
from distilset.files import HISTORY
from distilset.io import write_text
from distilset.pictures import png_bytes
from distilset.recipes import Replay, recipe_to_json
from distilset.scores import load_scores
from distilset.synset import SyntheticSet

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #111; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #999; margin-top: 2em; }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.grid { image-rendering: pixelated; border: 1px solid #ccc; max-width: 100%; }
.plots svg { max-width: 100%; height: auto; } .muted { color: #555; } code { font-size: 0.9em; }
details { margin: 0.5em 0; }
"""


@dataclass
class Entry:
    """One set directory as the page shows it."""

    path: Path
    syn: SyntheticSet
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    scores: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def latest(self, protocol: str) -> dict | None:
        rows = [e for e in self.evaluations if e.get("protocol") == protocol]
        return rows[-1] if rows else None


def load_entry(directory: str | os.PathLike) -> Entry:
    path = Path(directory)
    syn = SyntheticSet.load(path)
    history: list[dict] = []
    if (path / HISTORY).exists():
        try:
            raw = json.loads((path / HISTORY).read_text())
        except (OSError, ValueError) as e:
            raise DistilsetError(f"{path / 'history.json'} is unreadable ({e}); delete it or fix it") from e
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise DistilsetError(f"{path / 'history.json'} is not a list of rows; delete it or fix it")
        history = raw
    return Entry(path, syn, history, load_evaluations(path), load_scores(path))


# ---- pieces ------------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(row: Mapping | None) -> str:
    if not row:
        return "–"
    return f"{100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def picture_tag(syn: SyntheticSet, alt: str) -> str:
    picture = syn.picture(max_per_class=1, tiles=3) if syn.is_texture else syn.picture()
    data = base64.b64encode(png_bytes(picture)).decode()
    return f'<img class="grid" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def curves_svg(history: Sequence[Mapping[str, Any]], max_panels: int = 6) -> str:
    """Each numeric metric of ``history`` against the iteration in its own small panel, as inline SVG."""
    keys = [k for k in history[0] if k not in ("iteration", "time_s")] if history else []
    keys = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in history)][:max_panels]
    if not keys:
        return '<p class="muted">no learning curves (no history.json)</p>'
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.5 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [
            (r.get("iteration", i + 1), r[key])
            for i, r in enumerate(history)
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        marker = "o" if len(points) <= 30 else None
        ax.plot(xs, ys, color="black", linewidth=1, marker=marker, markersize=3)
        if all(y > 0 for y in ys) and max(ys) / max(min(ys), 1e-300) > 100:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, color="#ccc", linewidth=0.5)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and doctype: the SVG sits inside HTML


def _same_run(a: Mapping, b: Mapping) -> bool:
    """Two recorded evaluations of one recipe on one net: the same recipe fields, net, net options, init and
    teacher."""
    keys = ("recipe", "net", "net_kwargs")
    settings = ("init", "teacher")
    return all(a.get(k) == b.get(k) for k in keys) and all(
        a.get("settings", {}).get(k) == b.get("settings", {}).get(k) for k in settings
    )


def _same_steps(a: SyntheticSet, b: SyntheticSet) -> bool:
    """For replay sets: the same learned steps (lrs, step order, init); else always true."""
    if not isinstance(a.recipe, Replay):
        return True

    def same(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))

    mine, theirs = a.init_params or {}, b.init_params or {}
    inits = mine.keys() == theirs.keys() and all(torch.equal(v, theirs[k]) for k, v in mine.items())
    return same(a.lrs, b.lrs) and same(a.step_order, b.step_order) and inits


def _random_twin(entry: Entry, entries: Sequence[Entry], evaluation: Mapping | None) -> tuple[Entry, dict] | None:
    """A random real set of the entry's dataset and size among ``entries``, with its latest evaluation of exactly
    the recipe and net of ``evaluation`` (one of the entry's): the like-for-like comparison, or None."""
    if evaluation is None:
        return None
    for other in entries:
        s = other.syn
        if other is entry or s.method != "random" or s.dataset != entry.syn.dataset or len(s) != len(entry.syn):
            continue
        if evaluation.get("protocol") == "recipe" and not _same_steps(entry.syn, s):
            continue  # a replay's twin replays that set's own learned steps
        same = [e for e in other.evaluations if _same_run(e, evaluation)]
        if same:
            return other, same[-1]
    return None


def _score(entry: Entry, key: str) -> str:
    value = entry.scores[-1].get(key) if entry.scores else None
    return "–" if value is None else f"{100 * value:.1f}"


def _section(entry: Entry, entries: Sequence[Entry]) -> str:
    syn = entry.syn
    parts = [f'<h2 id="{_e(entry.name)}">{_e(entry.name)}</h2>']
    shape = "x".join(map(str, syn.image_shape))
    parts.append(
        f"<p>{_e(syn.method or 'unknown method')} on {_e(syn.dataset or 'an unrecorded dataset')}: {len(syn)} "
        f"{'texture canvases' if syn.is_texture else 'items'} of {_e(shape)}, "
        f"{'soft' if syn.soft else 'hard'} labels; directory <code>{_e(entry.path)}</code></p>"
    )
    if syn.images.ndim == 4:
        parts.append(picture_tag(syn, f"distilled images of {entry.name}"))
    parts.append("<h3>Learning curves</h3>")
    parts.append(f'<div class="plots">{curves_svg(entry.history)}</div>')
    parts.append("<h3>Evaluations</h3>")
    if entry.evaluations:
        rows = [
            (
                e.get("date", ""),
                e["protocol"],
                e["net"],
                e.get("settings", {}).get("recipe_text", ""),
                _pct(e),
                len(e["runs"]),
                " ".join(f"{100 * r:.1f}" for r in e["runs"]),
            )
            for e in entry.evaluations
        ]
        parts.append(table(("date", "protocol", "net", "recipe", "accuracy %", "nets", "runs %"), rows, (4, 5)))
    else:
        parts.append('<p class="muted">none recorded: run <code>distilset evaluate DIR --save</code> to add one</p>')
    for protocol in ("recipe", "standard"):
        twin = _random_twin(entry, entries, entry.latest(protocol))
        if twin is not None:
            other, e = twin
            parts.append(
                f"<p>Random real images of the same size ({_e(other.name)}), the same recipe and net as the latest "
                f"{'own-recipe' if protocol == 'recipe' else 'standard-protocol'} evaluation: {_pct(e)} % "
                f"({_e(e.get('settings', {}).get('recipe_text', e['protocol']))}; {_e(e['net'])}).</p>"
            )
    if entry.scores:
        s = entry.scores[-1]
        ars = "n/a" if s.get("ars") is None else f"{100 * s['ars']:.1f} %"
        parts.append("<h3>Robust scores (DD-Ranking)</h3>")
        parts.append(
            f"<p>LRS {100 * s['lrs']:.1f} %, ARS {ars}; HLR {100 * s['hlr']:+.1f} points, IOR {100 * s['ior']:+.1f} "
            f"points (w {s['weight']:g}, gamma {s['gamma']:g}, {_e(s.get('date', ''))}).</p>"
        )
        rows = [
            (k, f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}", v.get("recipe", ""))
            for k, v in s.get("accuracies", {}).items()
        ]
        parts.append(table(("run", "accuracy %", "recipe"), rows, (1,)))
    recipe = recipe_to_json(syn.recipe)
    parts.append("<h3>Training recipe</h3>")
    parts.append(table(("field", "value"), [(k, _value(v)) for k, v in recipe.items()]))
    if syn.config:
        parts.append("<h3>Resolved config</h3>")
        parts.append(table(("option", "value"), [(k, _value(v)) for k, v in syn.config.items()]))
    resolved = syn.extra.get("resolved") or {}
    if isinstance(resolved, Mapping) and resolved:
        parts.append("<h3>Why the automatic values</h3>")
        parts.append(table(("option", "reason"), [(k, v) for k, v in resolved.items()]))
    return "\n".join(parts)


GENERATOR = '<meta name="generator" content="distilset">'
"""Marks a page distilset wrote, so ``report`` replaces its own pages and nothing else."""


def _page(title: str, body: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n"
        f'<p class="muted">made by distilset on {stamp}</p>\n{body}\n</body></html>\n'
    )


def render(entries: Sequence[Entry], title: str = "distilset report") -> str:
    """The page for ``entries`` (see the module docstring)."""
    rows = []
    for entry in entries:
        own, standard = entry.latest("recipe"), entry.latest("standard")
        twins = [_random_twin(entry, entries, e) for e in (own, standard)]
        real = [_pct(t[1]) if t else "–" for t in twins]
        rows.append(
            (
                entry.name,
                entry.syn.method,
                entry.syn.dataset,
                len(entry.syn),
                _pct(own),
                real[0],
                _pct(standard),
                real[1],
                _score(entry, "lrs"),
                _score(entry, "ars"),
            )
        )
    header = (
        "set",
        "method",
        "dataset",
        "items",
        "own recipe %",
        "random real, same recipe and net %",
        "standard protocol %",
        "random real, standard protocol %",
        "LRS %",
        "ARS %",
    )
    body = ["<h2>Comparison</h2>", table(header, rows, (3, 4, 5, 6, 7, 8, 9))]
    body += [_section(entry, entries) for entry in entries]
    return _page(title, "\n".join(body))


def report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike, title: str = "distilset report") -> Path:
    """Write the HTML report of the set directories ``dirs`` to ``out`` (atomically); return its path."""
    if not dirs:
        raise DistilsetError("name at least one set directory to report on")
    out = Path(out)
    if not str(out):
        raise DistilsetError("`out` is empty; give the page's file name, such as report.html")
    if out.is_dir():
        raise DistilsetError(f"`out` {out} is a directory; give a file name such as {out / 'report.html'}")
    if out.exists() or out.is_symlink():
        try:
            head = out.read_bytes()[:8192] if out.is_file() and not out.is_symlink() else b""
            ours = GENERATOR.encode() in head or b'<p class="muted">made by distilset on' in head  # or an older page
        except OSError:
            ours = False
        if not ours:
            raise DistilsetError(
                f"`out` {out} exists and is not a page distilset wrote; it is left as it is: give a new file name"
            )
    entries = [load_entry(d) for d in dirs]
    try:
        return write_text(out, render(entries, title))
    except OSError as e:
        raise DistilsetError(f"cannot write the report to {out} ({e.strerror or e}); give a writable path") from e


# ---- benchmark results ---------------------------------------------------------------------------------------
def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and {"mean", "std"} <= set(v):
            flat[key] = f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" if v["mean"] <= 1 else _value(v["mean"])
        elif isinstance(v, Mapping) and key.count(".") < 2 and k not in ("config", "resolved", "recipe"):
            flat.update(_flatten(v, f"{key}."))
        elif not isinstance(v, (Mapping, list)):
            flat[key] = _value(v)
    return flat


def results_page(path: str | os.PathLike) -> str:
    """A benchmark's results file (``{"settings", "machine", "rows"}``) as a page in the report's style."""
    path = Path(path)
    data = json.loads(path.read_text())
    rows = [_flatten(r) for r in data.get("rows", [])]
    columns = list(dict.fromkeys(k for r in rows for k in r if k not in ("command", "benchmark_command")))
    body = [
        f"<p>{len(rows)} rows from <code>{_e(path.name)}</code></p>",
        "<h2>Machine and settings</h2>",
        table(
            ("field", "value"),
            [(k, _value(v)) for k, v in {**data.get("machine", {}), **data.get("settings", {})}.items()],
        ),
        "<h2>Rows</h2>",
        table(columns, ([r.get(c, "") for c in columns] for r in rows)),
        "<h2>Commands</h2>",
        table(("row", "command"), [(i, r.get("command", "")) for i, r in enumerate(rows)]),
    ]
    return _page(f"benchmark results: {path.stem}", "\n".join(body))


__all__ = ["curves_svg", "load_entry", "render", "report", "results_page", "table"]
