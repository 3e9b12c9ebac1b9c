"""Sets in and out: each import format written by the test itself, the checks every file passes before anything is
written, the export round trip, and the set as a torch Dataset in a plain training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import distilset as ds
from distilset.cli import main
from distilset.exchange import export_set, import_set


@pytest.fixture(scope="module")
def real(digits):
    return ds.baseline("random", digits, ipc=2, seed=1)


def test_mtt_files_import_with_the_learned_lr_and_mtts_recipe(digits, real, tmp_path):
    torch.save(real.images.clone(), tmp_path / "images_best.pt")
    torch.save(real.labels.clone(), tmp_path / "labels_best.pt")
    torch.save(torch.tensor(0.0234), tmp_path / "syn_lr_best.pt")
    syn = import_set("mtt", tmp_path, digits)
    assert torch.equal(syn.images, real.images) and torch.equal(syn.labels, real.labels)
    assert syn.recipe.lr == pytest.approx(0.0234) and syn.recipe.dsa == digits.info.dsa_strategy
    assert syn.recipe.epochs == 1000 and syn.net["name"] == "convnet"
    prov = syn.extra["provenance"]
    assert prov["format"] == "mtt" and len(prov["files"]["images_best.pt"]) == 64  # a SHA-256 of each file
    assert ds.evaluate(syn, digits, repeats=1, epochs=20).accuracy_mean > 0.3


def test_dc_results_pick_the_experiment_and_the_variants_augmentation(digits, real, tmp_path):
    other = real.images.flip(3).contiguous()
    torch.save({"data": [[real.images, real.labels], [other, real.labels]], "accs_all_exps": {"ConvNet": [0.5]}},
               tmp_path / "res_DM_digits_ConvNet_2ipc.pt")  # fmt: skip
    syn = import_set("dc", tmp_path / "res_DM_digits_ConvNet_2ipc.pt", digits, index=1, variant="dm")
    assert torch.equal(syn.images, other) and syn.recipe.dsa == digits.info.dsa_strategy
    assert import_set("dc", tmp_path / "res_DM_digits_ConvNet_2ipc.pt", digits).recipe.dsa is None


def test_a_folder_per_class_in_sre2ls_layout(digits, real, tmp_path):
    pixels = real.to_pixels()
    for i, (x, k) in enumerate(zip(pixels, real.labels.tolist(), strict=True)):
        (tmp_path / f"new{k:03d}").mkdir(exist_ok=True)
        Image.fromarray((x[0].numpy() * 255).round().astype(np.uint8)).save(
            tmp_path / f"new{k:03d}/class{k:03d}_id{i:03d}.png"
        )
    syn = import_set("folder", tmp_path, digits)
    assert sorted(syn.labels.tolist()) == sorted(real.labels.tolist())
    assert (syn.to_pixels() - real.to_pixels()[torch.argsort(real.labels, stable=True)]).abs().max() < 1 / 255 + 1e-6


@pytest.mark.parametrize("fmt", ["npz", "pt"])
def test_export_then_import_gives_the_same_tensors(digits, tmp_path, fmt):
    soft = ds.baseline("kmeans", digits, ipc=1)
    soft.labels = torch.softmax(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)), 1)
    export_set(soft, fmt, tmp_path / f"s.{fmt}")
    back = import_set(fmt, tmp_path / f"s.{fmt}", digits)
    assert torch.equal(back.images, soft.images) and torch.equal(back.labels, soft.labels)


def test_folder_export_writes_pngs_and_soft_labels_that_import_back(digits, tmp_path):
    soft = ds.baseline("kmeans", digits, ipc=1)
    soft.labels = torch.softmax(torch.randn(10, 10, generator=torch.Generator().manual_seed(0)), 1)
    out = export_set(soft, "folder", tmp_path / "f")
    listing = json.loads((out / "labels.json").read_text())
    assert listing["soft"] and len(listing["files"]) == 10 and (out / listing["files"][0]).suffix == ".png"
    back = import_set("folder", out, digits)
    assert torch.allclose(back.labels, soft.labels) and (back.to_pixels() - soft.to_pixels()).abs().max() < 0.51 / 255
    with pytest.raises(ds.DistilsetError, match="not an empty directory"):
        export_set(soft, "folder", out)


def _planted(tmp_path, case):
    x, y = torch.randn(20, 1, 8, 8), torch.arange(10).repeat(2)
    if case == "pickle with code":
        torch.save({"images": ds.Standard(), "labels": y}, tmp_path / "s.pt")  # an object weights_only refuses
    elif case == "wrong shape":
        torch.save({"images": torch.randn(20, 3, 8, 8), "labels": y}, tmp_path / "s.pt")
    elif case == "NaN":
        torch.save({"images": x.index_fill(0, torch.tensor([3]), float("nan")), "labels": y}, tmp_path / "s.pt")
    elif case == "a class too many":
        torch.save({"images": x, "labels": y.index_fill(0, torch.tensor([0]), 12)}, tmp_path / "s.pt")
    elif case == "a class missing":
        torch.save({"images": x, "labels": y % 9}, tmp_path / "s.pt")
    elif case == "labels not numbers":
        torch.save({"images": x, "labels": y.float() + 0.5}, tmp_path / "s.pt")
    return tmp_path / "s.pt"


@pytest.mark.parametrize(
    "case, needle",
    [
        ("pickle with code", "is not a file of plain tensors"),
        ("wrong shape", "needs (N, *(1, 8, 8))"),
        ("NaN", "NaN or inf"),
        ("a class too many", "classes 0..9"),
        ("a class missing", "no image of class 9"),
        ("labels not numbers", "not class numbers"),
    ],
)
def test_a_file_that_is_not_what_it_claims_is_one_line_and_writes_nothing(tmp_path, capsys, case, needle):
    path = _planted(tmp_path, case)
    code = main(["import", "pt", str(path), "--dataset", "digits", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("distilset: error:") == 1 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_cli_import_and_export(digits, real, tmp_path, capsys):
    real.save(tmp_path / "set")
    assert main(["export", str(tmp_path / "set"), "--format", "npz", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["export", str(tmp_path / "set"), "--format", "npz", "--out", str(tmp_path / "s.npz")]) == 2
    assert "never replaces a file" in capsys.readouterr().err
    assert main(["import", "npz", str(tmp_path / "s.npz"), "--dataset", "digits", "--out", str(tmp_path / "i")]) == 0
    assert torch.equal(ds.SyntheticSet.load(tmp_path / "i").images, real.images)


def test_a_set_trains_a_users_own_net_in_a_plain_loop(digits):
    syn = ds.baseline("random", digits, ipc=10)
    loader = torch.utils.data.DataLoader(syn.torch_dataset(), batch_size=20, shuffle=True)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    accuracy = (net(digits.test_x).argmax(1) == digits.test_y).float().mean()
    assert accuracy > 0.7
    syn.recipe = ds.Standard(dsa=digits.info.dsa_strategy)
    augmented = syn.torch_dataset(augment=True, seed=0)
    x0, y0 = augmented[0]
    assert x0.shape == syn.images[0].shape and int(y0) == int(syn.labels[0]) and not torch.equal(x0, syn.images[0])


def test_an_npy_named_npz_and_a_damaged_labels_listing_are_one_line(digits, real, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((20, 1, 8, 8), np.float32))
    (tmp_path / "x.npy").rename(tmp_path / "x.npz")
    assert main(["import", "npz", str(tmp_path / "x.npz"), "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    assert "not an npz archive" in capsys.readouterr().err
    folder = export_set(real, "folder", tmp_path / "f")
    (folder / "labels.json").write_text('{"files": null, "labels": null}')
    assert main(["import", "folder", str(folder), "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lists other files" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_export_never_replaces_a_file_and_refuses_zca_tensors(digits, real, tmp_path):
    (tmp_path / "mine.npz").write_bytes(b"a user's file")
    with pytest.raises(ds.DistilsetError, match="never replaces a file"):
        export_set(real, "npz", tmp_path / "mine.npz")
    assert (tmp_path / "mine.npz").read_bytes() == b"a user's file"
    whitened = ds.baseline("random", digits.with_zca(), ipc=1)
    with pytest.raises(ds.DistilsetError, match="ZCA-whitened"):
        export_set(whitened, "pt", tmp_path / "z.pt")
    assert not list(tmp_path.glob(".*tmp"))  # no staging leftovers
