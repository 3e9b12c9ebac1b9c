"""`distilset report`: the page holds every section for each kind of set, escapes what it shows, and renders
in a real browser (Debian's chromium driven by Playwright) with decoded pictures and no console errors."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import distilset as ds
from distilset.cli import main
from distilset.evaluate import EVALUATIONS, load_evaluations, record_evaluation
from distilset.report import load_entry, render, report, results_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAST_DD = {"net": "mlp", "steps": 2, "epochs": 2, "real_batch": 256, "net_init": "random"}


class _Tags(HTMLParser):
    """Counts start tags and collects the text, to check structure rather than substrings."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def _parse(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def sets(tmp_path_factory, digits):
    """A DD run (replay recipe, history, resolved config), a soft-label set, a texture set and random real images
    of the DD set's size, each with a recorded evaluation."""
    root = tmp_path_factory.mktemp("sets")
    dd = ds.distill("dd", digits, iterations=3, out=root / "dd", **FAST_DD)
    record_evaluation(root / "dd", ds.evaluate(dd, digits, repeats=1))
    real = ds.random_real_like(dd, digits)  # the same count, net and recipe (DD's replay)
    real.save(root / "random")
    record_evaluation(root / "random", ds.evaluate(real, digits, repeats=1))
    soft = ds.baseline("random", digits, ipc=2)
    soft.labels = torch.softmax(torch.randn(len(soft), 10, generator=torch.Generator().manual_seed(0)), 1)
    soft.method = "labels"
    soft.save(root / "soft")
    texture = ds.Standard(crop=(8, 8))
    canvas = ds.SyntheticSet(torch.rand(10, 1, 16, 16), torch.arange(10), digits.info.class_names,
                             digits.info.norm, dataset="digits", method="mtt", recipe=texture)  # fmt: skip
    canvas.save(root / "texture")
    return root


def test_every_section_for_each_kind_of_set(sets):
    dirs = [sets / name for name in ("dd", "random", "soft", "texture")]
    page = (report(dirs, sets / "report.html")).read_text()
    tags = _parse(page)
    assert tags.h2 == ["Comparison", "dd", "random", "soft", "texture"]
    assert tags.tags["img"] == 4  # every set's picture, inlined
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)\s*=\s*"(https?:|//)', page) and "<script" not in page  # nothing fetched
    assert tags.tags["svg"] >= 1 and "lr_mean" in page  # DD's learning curves: loss and learned lrs
    assert "decay_epochs" in page.split("Why the automatic values")[1].split("<h2")[0]  # DD's resolved settings
    assert "texture canvases" in page and "soft labels" in page
    comparison = page.split("<h2")[1]
    # the DD set's own-recipe accuracy, and random real of the same size beside it
    dd_eval, real_eval = load_evaluations(sets / "dd")[-1], load_evaluations(sets / "random")[-1]
    assert f"{100 * dd_eval['accuracy_mean']:.1f}" in comparison
    assert f"{100 * real_eval['accuracy_mean']:.1f}" in comparison.split("<tr>")[2]
    assert "none recorded" in page  # the soft and texture sets have no evaluation yet


def test_a_comparison_cell_never_mixes_recipes(sets, tmp_path, digits):
    """Random real images evaluated only by another recipe (DC's protocol, 5 epochs) are not put beside the DD
    set's replay; once they are evaluated by the replay too, that evaluation is, and under the standard protocol
    column only a standard evaluation of the same net and recipe counts."""
    other = tmp_path / "random-other"
    real = ds.baseline("random", digits, ipc=len(ds.SyntheticSet.load(sets / "dd")) // 10)
    real.save(other)
    wrong = ds.evaluate(real, digits, net="mlp", repeats=1, epochs=5)
    record_evaluation(other, wrong)
    row = (report([sets / "dd", other], tmp_path / "r.html")).read_text().split("<tr>")[2]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells[5] == "–" and cells[7] == "–"  # neither random-real column takes the 5-epoch run
    assert f"{100 * wrong.accuracy_mean:.1f}" not in row
    dd = ds.SyntheticSet.load(sets / "dd")
    record_evaluation(sets / "dd", ds.evaluate(dd, digits, protocol="standard", repeats=1, epochs=5))
    real.net = dict(dd.net)  # the same net and init (DD's), as random_real_like gives
    record_evaluation(other, ds.evaluate(real, digits, protocol="standard", repeats=1, epochs=5))
    row = (report([sets / "dd", other], tmp_path / "r.html")).read_text().split("<tr>")[2]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
    assert cells[5] == "–" and cells[7] != "–"  # the standard column now has its like-for-like twin


def test_names_from_sets_and_paths_are_escaped(sets, tmp_path):
    hostile = tmp_path / "<script>alert(1)</script>"
    shutil.copytree(sets / "soft", hostile)
    meta = json.loads((hostile / "synset.json").read_text())
    meta["method"] = '<img src=x onerror="alert(2)">'
    (hostile / "synset.json").write_text(json.dumps(meta))
    page = render([load_entry(hostile)])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page


def test_evaluate_save_appends_and_report_cli(sets, tmp_path, capsys):
    target = tmp_path / "soft"
    shutil.copytree(sets / "soft", target)  # a plain-training set: --epochs applies to its recipe
    before = len(load_evaluations(target))
    args = ["evaluate", str(target), "--net", "mlp", "--repeats", "1", "--epochs", "3", "--save"]
    assert main(args) == 0 and main([*args, "--protocol", "standard"]) == 0
    rows = load_evaluations(target)
    assert len(rows) == before + 2 and [r["protocol"] for r in rows[-2:]] == ["recipe", "standard"]
    assert main(["report", str(target), "--out", str(tmp_path / "r.html")]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "r.html").stat().st_size > 1000
    (target / EVALUATIONS).write_text('[{"protocol": 1}]')
    assert main(["report", str(target), "--out", str(tmp_path / "r2.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("distilset: error:") == 1 and "entry 0 is not an evaluation" in err
    assert not (tmp_path / "r2.html").exists()
    assert main(["report", str(target), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_benchmark_results_render_in_the_same_style(tmp_path):
    path = Path(__file__).parents[1] / "benchmarks" / "results" / "defaults.json"
    rows = json.loads(path.read_text())["rows"]
    page = results_page(path)
    tags = _parse(page)
    assert tags.h2 == ["Machine and settings", "Rows", "Commands"]
    assert page.count("<tr>") >= 2 * len(rows) + 2 and rows[0]["command"] in page


@pytest.mark.heavy
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.sh installs it as root on Debian)")
def test_the_page_renders_in_a_browser(sets, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_path = report([sets / n for n in ("dd", "random", "soft", "texture")], tmp_path / "report.html")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda route: route.abort() if not route.request.url.startswith(("file:", "data:"))
                       else route.continue_())  # fmt: skip
            page.goto(page_path.as_uri())
            widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            tables = page.locator("table").count()
            plots = page.evaluate("Array.from(document.querySelectorAll('svg')).map(s => s.getBBox().width)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
    assert tables >= 1 + 4 and plots and all(w > 0 for w in plots)
    assert errors == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_replaces_its_own_page_and_refuses_any_other_file(sets, tmp_path, capsys):
    target = tmp_path / "random"
    shutil.copytree(sets / "random", target)
    page = tmp_path / "r.html"
    assert main(["report", str(target), "--out", str(page)]) == 0
    assert main(["report", str(target), "--out", str(page), "--title", "again"]) == 0  # its own page: replaced
    assert "<title>again</title>" in page.read_text()
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my notes</html>")
    link = tmp_path / "link.html"
    link.symlink_to(page)
    before = {p: p.read_bytes() for p in (mine, target / "synset.json", target / "grid.png")}
    for out in (mine, target / "synset.json", target / "grid.png", link, ""):
        assert main(["report", str(target), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("distilset: error:") == 1 and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in before} == before and link.is_symlink()
    assert main(["report", str(target), "--out", str(page / "x.html")]) == 2  # a file where a folder should be
    assert "cannot write the report" in capsys.readouterr().err


def test_a_replay_twin_stands_only_beside_the_set_whose_steps_it_replays(sets, tmp_path, digits):
    other = ds.distill("dd", digits, iterations=2, out=tmp_path / "dd2", seed=5, **FAST_DD)  # other learned lrs
    record_evaluation(tmp_path / "dd2", ds.evaluate(other, digits, repeats=1))
    row = (report([tmp_path / "dd2", sets / "random"], tmp_path / "r.html")).read_text().split("<tr>")[2]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row)[5] == "–"  # the twin of the first DD set is not its twin
    row = (report([sets / "dd", sets / "random"], tmp_path / "r.html")).read_text().split("<tr>")[2]
    assert re.findall(r"<td[^>]*>([^<]*)</td>", row)[5] != "–"
