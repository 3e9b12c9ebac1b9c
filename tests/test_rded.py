"""RDED: every patch is a crop of a real image of its class, the best-scored of its candidates, stitched in
RDED's order; the scoring is the same on Ray; one class per iteration."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import sigint_after

import distilset as ds
from distilset.errors import Interrupted
from distilset.methods.base import Context
from distilset.methods.rded import RDED, RDEDConfig, cut_patch
from distilset.teachers import load_teacher


def _independent_score(teacher, patch: torch.Tensor, label: int, size: tuple[int, int]) -> float:
    """The teacher's cross-entropy of one patch centred in a zero image, computed here without RDED's code."""
    image = torch.zeros(patch.shape[0], *size)
    h, w = patch.shape[1:]
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    image[:, top : top + h, left : left + w] = patch
    with torch.no_grad():
        return float(F.cross_entropy(teacher.module(image[None]), torch.tensor([label])))


@pytest.mark.parametrize("factor", [1, 2])
def test_every_patch_is_a_real_crop_of_its_class_and_the_best_scored_of_its_candidates(digits_teacher, digits, factor):
    teacher = load_teacher(digits_teacher)
    cfg = RDEDConfig(ipc=3, candidates=20, crops=3, factor=factor)
    run = RDED(digits, cfg, Context(seed=4), teacher=teacher)
    for c in range(10):
        run.step(c)
    syn = run.synthetic_set()
    size = (8 // factor, 8 // factor)
    for item, (image, label) in enumerate(zip(syn.images, syn.labels, strict=True)):
        for slot, (index, top, left, h, w) in enumerate(syn.extra["patches"][item]):
            assert digits.train_y[index] == label  # a real image of the item's class
            row, col = divmod(slot, factor)
            region = image[:, row * size[0] : (row + 1) * size[0], col * size[1] : (col + 1) * size[1]]
            assert torch.equal(region, cut_patch(digits.train_x[index], [top, left, h, w], size))  # bit for bit
            assert h == w and 1 <= h <= 8  # a square crop
    for c, chosen in run.selection.items():
        boxes, scores, candidates = chosen["boxes"], chosen["scores"], chosen["candidates"]
        for n in range(0, len(candidates), 7):  # the scores are the teacher's, recomputed independently
            for m in range(cfg.crops):
                patch = cut_patch(digits.train_x[candidates[n]], boxes[n, m].tolist(), size)
                assert abs(_independent_score(teacher, patch, c, (8, 8)) - float(scores[n, m])) < 1e-4
        best = scores.min(1).values
        kept = chosen["kept"]
        assert best[kept].max() <= best[torch.ones(len(best), dtype=torch.bool).index_fill_(0, kept, False)].min()
        ranked = best[kept]
        assert torch.equal(ranked, ranked.sort().values)  # slot k of image i holds rank k * ipc + i
        items = [c * cfg.ipc + i for i in range(cfg.ipc)]
        for rank, cand in enumerate(kept.tolist()):
            slot, i = divmod(rank, cfg.ipc)
            assert syn.extra["patches"][items[i]][slot][0] == int(candidates[cand])


def test_rded_takes_one_class_per_iteration_and_refuses_other_budgets(digits_teacher, digits, tmp_path):
    with pytest.raises(ds.ConfigError, match="iterations must be 10"):
        ds.distill("rded", digits, iterations=3, teacher=str(digits_teacher))
    with pytest.raises(ds.ConfigError, match="factor 3 must divide"):
        ds.distill("rded", digits, factor=3, teacher=str(digits_teacher))
    with pytest.raises(ds.ConfigError, match="candidates 5 must be at least"):
        ds.distill("rded", digits, candidates=5, teacher=str(digits_teacher))
    syn = ds.distill("rded", digits, ipc=2, candidates=10, teacher=str(digits_teacher), eval_every=5, out=tmp_path)
    assert syn.recipe.kind == "teacher" and syn.teacher is not None and len(syn) == 20
    history = json.loads((tmp_path / "history.json").read_text())
    assert "val_acc" not in history[4] and history[9]["val_acc"] > 0.5  # once every class is there


def test_a_run_stopped_by_a_signal_resumes_bit_for_bit(tmp_path, digits_teacher, digits, monkeypatch):
    args = {"ipc": 2, "candidates": 10, "teacher": str(digits_teacher), "checkpoint_every": 1}
    full = ds.distill("rded", digits, out=tmp_path / "full", **args)
    with sigint_after(monkeypatch, RDED, 4), pytest.raises(Interrupted, match="after iteration 5 of 10"):
        ds.distill("rded", digits, out=tmp_path / "cut", **args)
    resumed = ds.distill("rded", digits, out=tmp_path / "cut", resume=True, **args)
    assert torch.equal(full.images, resumed.images) and full.extra["patches"] == resumed.extra["patches"]
