"""MTT (Cazenavette et al.): expert buffers, the trajectory-matching loss and its two gradient paths, texture
mode, lr positivity, NaN stop, and evaluation with the carried lr."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import distilset as ds
from distilset.augment import toroidal_crop
from distilset.cli import main
from distilset.errors import DistilsetError
from distilset.methods.base import RunConfig, run
from distilset.methods.experts import ExpertBuffer, ExpertConfig, expert_path, train_experts
from distilset.methods.mtt import MTT, MTTConfig
from distilset.unroll import sgd_unroll

EXPERT = ExpertConfig(net="mlp", epochs=3, batch_size=64, lr=0.05)
SMALL = {"net": "mlp", "ipc": 2, "syn_steps": 4, "expert_epochs": 1, "max_start_epoch": 2, "lr_img": 10.0}


@pytest.fixture(scope="module")
def experts_dir(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("experts")
    train_experts(digits, out, 2, EXPERT)
    return out


def test_expert_buffer_write_resume_read(digits, tmp_path, experts_dir):
    buf = ExpertBuffer(experts_dir)
    assert len(buf) == 2 and buf.epochs == 3
    first, last = buf.flat(0, 0), buf.flat(0, 3)
    assert first.shape == (buf.numel,) and first.dtype == torch.float32 and not torch.equal(first, last)
    assert set(buf.params(0, 1)) == {k for k, _ in buf.param_shapes}
    assert buf.manifest["experts"]["0"]["test_accuracy"] > 0.5  # experts learned the task
    # Resume: a missing expert is trained again, a finished one is left alone.
    out = tmp_path / "exp"
    train_experts(digits, out, 2, EXPERT)
    before = os.stat(expert_path(out, 0)).st_mtime_ns
    expert_path(out, 1).unlink()
    train_experts(digits, out, 3, EXPERT)
    assert os.stat(expert_path(out, 0)).st_mtime_ns == before
    assert ExpertBuffer(out).ids == [0, 1, 2]
    assert torch.equal(ExpertBuffer(out).flat(1, 2), buf.flat(1, 2))  # same seed, same expert
    with pytest.raises(DistilsetError, match="other settings"):
        train_experts(digits, out, 3, ExpertConfig(net="mlp", epochs=4, batch_size=64, lr=0.05))
    half = train_experts(digits, tmp_path / "half", 1, ExpertConfig(net="mlp", epochs=1, dtype="float16"))
    assert load_file(str(expert_path(half.path, 0)))["epoch_001"].dtype == torch.float16


def test_distillation_reads_only_the_epochs_it_can_sample(digits, experts_dir, monkeypatch):
    read = []
    original = ExpertBuffer.flat
    monkeypatch.setattr(ExpertBuffer, "flat", lambda self, e, ep: read.append(ep) or original(self, e, ep))
    mtt = MTT(digits, experts_dir, MTTConfig(**SMALL))
    for i in range(6):
        mtt.step(i)
    assert read and max(read) <= SMALL["max_start_epoch"] - 1 + SMALL["expert_epochs"]


def test_loss_is_zero_when_the_student_reproduces_the_expert(digits, experts_dir, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    for f in experts_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    mtt = MTT(digits, out, MTTConfig(**SMALL))
    expert, start, order, seeds = mtt._plan()
    steps = [(mtt.student_batch(order[t], seeds[t]).detach(), mtt.labels[order[t]], mtt.syn_lr.detach())
             for t in range(SMALL["syn_steps"])]  # fmt: skip
    theta = {k: v.clone().requires_grad_(True) for k, v in mtt.experts.params(expert, start).items()}
    final = sgd_unroll(mtt.model, theta, lambda t: steps[t], 0, len(steps), create_graph=False)
    tensors = load_file(str(expert_path(out, expert)))
    tensors[f"epoch_{start + 1:03d}"] = torch.cat([v.detach().reshape(-1) for v in final.values()])
    save_file(tensors, str(expert_path(out, expert)))
    loss, _ = mtt.matching_loss(expert, start, order, seeds)
    assert float(loss) < 1e-10
    other, _ = mtt.matching_loss(expert, start, order, [[s[0], s[1] + 1] for s in seeds])  # other augmentations
    assert float(other) > 1e-6


def test_checkpointed_path_gives_the_same_gradient(digits, tmp_path):
    cfg = ExpertConfig(net="convnet", net_kwargs={"width": 8, "depth": 2}, epochs=2, batch_size=256)
    buf = train_experts(digits, tmp_path / "conv", 1, cfg)
    mtt = MTT(digits, buf, MTTConfig(**{**SMALL, "net": "convnet", "net_kwargs": cfg.net_kwargs, "syn_steps": 9}))
    plan = mtt._plan()
    loss_a, (img_a, lr_a) = mtt.matching_loss(*plan, memory="plain")
    loss_b, (img_b, lr_b) = mtt.matching_loss(*plan, memory="checkpoint")
    assert torch.allclose(loss_a, loss_b, rtol=1e-6)
    assert (img_a - img_b).norm() <= 1e-4 * img_a.norm() and img_a.norm() > 0
    assert torch.allclose(lr_a, lr_b, rtol=1e-4)


def test_matching_lowers_the_loss_and_learns_the_lr(digits, experts_dir):
    mtt = MTT(digits, experts_dir, MTTConfig(**{**SMALL, "lr_lr": 1e-4}))
    plan = mtt._plan()
    before, _ = mtt.matching_loss(*plan)
    lrs = [mtt.step(i)["syn_lr"] for i in range(30)]
    after, _ = mtt.matching_loss(*plan)
    assert float(after) < float(before)
    assert lrs[-1] != SMALL.get("lr_teacher", 0.01)


def test_lr_stays_positive(digits, experts_dir, monkeypatch):
    mtt = MTT(digits, experts_dir, MTTConfig(**{**SMALL, "min_syn_lr": 1e-5}))
    original = mtt.matching_loss

    def push_lr_negative(*args, **kw):  # a gradient that would take the lr far below zero
        loss, (g_img, _) = original(*args, **kw)
        return loss, [g_img, torch.tensor(1e4)]

    monkeypatch.setattr(mtt, "matching_loss", push_lr_negative)
    assert mtt.step(0)["syn_lr"] == pytest.approx(1e-5)


def test_nan_stops_with_the_last_good_state_saved(digits, experts_dir, tmp_path):
    mtt = MTT(digits, experts_dir, MTTConfig(**SMALL))
    mtt.step(0)
    with torch.no_grad():
        mtt.images[0, 0, 0, 0] = float("nan")
    with pytest.raises(DistilsetError, match="not finite.*outer iteration 0.*--resume"):
        run(mtt, RunConfig(iterations=3, out=tmp_path))
    assert (tmp_path / "checkpoint" / "state.pt").exists()


def test_toroidal_crops_are_windows_of_the_tiled_canvas():
    canvas = torch.randn(3, 1, 8, 6)
    full = toroidal_crop(canvas, (8, 6), seed=3)  # a full-size crop is a roll ...
    assert any(torch.equal(full[0], torch.roll(canvas[0], (dy, dx), (-2, -1))) for dy in range(8) for dx in range(6))
    rolled_back = torch.roll(torch.roll(canvas, (8, 6), (-2, -1)), 0)
    assert torch.equal(rolled_back, canvas)  # ... and rolling a canvas by its size gives the canvas
    crops = toroidal_crop(canvas, (4, 4), seed=5)
    tiled = canvas.repeat(1, 1, 2, 2)
    for i in range(3):  # every crop, seams included, is a window of the periodic tiling
        assert any(torch.equal(crops[i], tiled[i, :, y : y + 4, x : x + 4]) for y in range(8) for x in range(6))
    assert torch.equal(crops, toroidal_crop(canvas, (4, 4), seed=5))


def test_texture_mode(digits, experts_dir, tmp_path):
    syn = ds.distill("mtt", digits, iterations=3, out=tmp_path, experts=experts_dir,
                     **{**SMALL, "texture": True, "canvas": 2})  # fmt: skip
    assert syn.images.shape == (20, 1, 16, 16) and syn.extra["texture"]["crop"] == [8, 8]
    assert (tmp_path / "tiles.png").exists()
    res = ds.evaluate(ds.SyntheticSet.load(tmp_path), digits, repeats=1, epochs=5)
    assert 0 <= res.accuracy_mean <= 1 and res.settings["crop"] == (8, 8)
    with pytest.raises(DistilsetError, match="texture mode cannot use ZCA"):
        MTT(digits.with_zca(), experts_dir, MTTConfig(**SMALL, texture=True))


def test_evaluation_uses_the_carried_lr_and_augmentation(digits, experts_dir, tmp_path):
    syn = ds.distill("mtt", digits, iterations=2, out=tmp_path, experts=experts_dir, **SMALL)
    loaded = ds.SyntheticSet.load(tmp_path)
    assert loaded.train_lr == pytest.approx(syn.train_lr) and loaded.dsa_strategy == digits.info.dsa_strategy
    res = ds.evaluate(loaded, digits, repeats=1, epochs=2)
    assert res.settings["lr"] == pytest.approx(syn.train_lr) and res.settings["dsa_strategy"] == loaded.dsa_strategy
    assert res.net == "mlp"


def test_bad_settings(digits, experts_dir):
    with pytest.raises(DistilsetError, match="need experts of at least 11 epochs"):
        MTT(digits, experts_dir, MTTConfig(**{**SMALL, "max_start_epoch": 10, "expert_epochs": 2}))
    with pytest.raises(DistilsetError, match="trained with net mlp"):
        MTT(digits, experts_dir, MTTConfig(**{**SMALL, "net": "convnet"}))
    with pytest.raises(DistilsetError, match="no expert trajectories"):
        ExpertBuffer(experts_dir / "nowhere")
    with pytest.raises(DistilsetError, match="lr_img must be > 0"):
        MTT(digits, experts_dir, MTTConfig(**{**SMALL, "lr_img": 0}))


def test_damaged_expert_files_give_clear_errors(digits, experts_dir, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    for f in experts_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    expert_path(out, 1).write_bytes(b"not a safetensors file")
    with pytest.raises(DistilsetError, match="cannot read epoch 0 of expert 1.*delete the file"):
        ExpertBuffer(out).flat(1, 0)
    expert_path(out, 0).unlink()
    with pytest.raises(DistilsetError, match="cannot read epoch 0 of expert 0"):
        ExpertBuffer(out).flat(0, 0)
    (out / "manifest.json").write_text("{")
    with pytest.raises(DistilsetError, match="not valid JSON"):
        ExpertBuffer(out)


def test_cli_experts_distill_evaluate(tmp_path, capsys):
    exp, out = tmp_path / "experts", tmp_path / "mtt"
    assert main(["experts", "--dataset", "digits", "--net", "mlp", "--experts", "1", "--epochs", "2",
                 "--out", str(exp)]) == 0  # fmt: skip
    assert "1 experts x 2 epochs" in capsys.readouterr().out
    assert main(["distill", "mtt", "--dataset", "digits", "--net", "mlp", "--ipc", "1", "--experts-dir", str(exp),
                 "--syn-steps", "3", "--expert-epochs", "1", "--max-start-epoch", "1", "--iterations", "2",
                 "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(out), "--epochs", "3", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["settings"]["lr"] == pytest.approx(ds.SyntheticSet.load(out).train_lr)
    assert main(["distill", "mtt", "--dataset", "digits", "--out", str(out)]) == 2
    assert "--experts-dir" in capsys.readouterr().err
    assert main(["distill", "dd", "--preset", "mtt-fashion-ipc10", "--out", str(out)]) == 2
    assert "is for `distill mtt`" in capsys.readouterr().err
    # a preset's settings apply, explicit flags override them (the experts cover fewer epochs than it assumes)
    assert main(["distill", "mtt", "--preset", "mtt-mnist5k-ipc1", "--dataset", "digits", "--net", "mlp",
                 "--experts-dir", str(exp), "--max-start-epoch", "1", "--expert-epochs", "1", "--syn-steps", "2",
                 "--iterations", "1", "--out", str(tmp_path / "p")]) == 0  # fmt: skip
    assert ds.SyntheticSet.load(tmp_path / "p").config["lr_img"] == 1000.0


def test_resume_is_exact(digits, experts_dir, tmp_path):
    full = ds.distill("mtt", digits, iterations=4, out=tmp_path / "a", experts=experts_dir, **SMALL)
    ds.distill("mtt", digits, iterations=2, out=tmp_path / "b", experts=experts_dir, **SMALL)
    resumed = ds.distill("mtt", digits, iterations=4, out=tmp_path / "b", resume=True, experts=experts_dir, **SMALL)
    assert torch.equal(full.images, resumed.images) and full.train_lr == resumed.train_lr
