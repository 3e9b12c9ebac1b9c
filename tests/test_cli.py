"""The command line: each command works end to end, and each user error is one line with exit status 2."""

from __future__ import annotations

import json

import pytest

from distilset.cli import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_datasets_lists_sources(capsys):
    code, out, _ = _run(capsys, "datasets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and rows["digits"]["present"] and rows["cifar10"]["image_shape"] == [3, 32, 32]
    code, out, _ = _run(capsys, "datasets")
    assert code == 0 and "fashion-mnist" in out and "npz:PATH" in out


def test_baseline_then_evaluate_json(tmp_path, capsys):
    out_dir = tmp_path / "km"
    code, out, _ = _run(capsys, "baseline", "kmeans", "--dataset", "digits", "--ipc", "3", "--out", str(out_dir))
    assert code == 0 and (out_dir / "synset.safetensors").exists() and (out_dir / "grid.png").exists()
    code, out, _ = _run(
        capsys,
        "evaluate",
        str(out_dir),
        "--net",
        "mlp",
        "--epochs",
        "30",
        "--repeats",
        "2",
        "--lr",
        "0.05",
        "--json",
    )
    result = json.loads(out)
    assert code == 0 and result["dataset"] == "digits" and len(result["runs"]) == 2
    assert result["accuracy_mean"] > 0.5 and result["protocol"] == "recipe" and result["recipe"]["lr"] == 0.05
    code, out, _ = _run(capsys, "evaluate", str(out_dir), "--net", "mlp", "--epochs", "5", "--repeats", "1")
    assert code == 0 and "test accuracy" in out and "runs:" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["baseline", "random", "--dataset", "imagenet", "--out", "X"], "unknown dataset 'imagenet'"),
        (
            ["baseline", "random", "--dataset", "fashion-mnist", "--data-path", "/nonexistent", "--out", "X"],
            "dataset-fashion-mnist",
        ),
        (
            ["baseline", "random", "--dataset", "digits", "--ipc", "500", "--out", "X"],
            "--ipc 500 needs 500 training images of every class",
        ),
        (["evaluate", "/nonexistent/set"], "not a saved synthetic set"),
        (["evaluate", "CORRUPT"], "unreadable"),
        (["baseline", "random", "--dataset", "digits", "--out", "X", "--device", "cuda"], "no CUDA device"),
        (["evaluate", "GOOD", "--net-arg", "width"], "KEY=VALUE"),
        (["evaluate", "GOOD", "--protocol", "best"], "invalid choice: 'best'"),
        (["baseline", "random", "--dataset", "digits", "--ipc", "0", "--out", "X"], "--ipc must be >= 1"),
        (["distill", "dd", "--dataset", "digits", "--evaluate", "-1", "--out", "X"], "--evaluate must be >= 0"),
        (["evaluate", "GOOD", "--repeats", "0"], "--repeats must be >= 1"),
        (["experts", "--dataset", "digits", "--out", "X", "--lr", "0"], "--lr must be > 0"),
        (["experts", "--dataset", "digits", "--out", "X", "--experts", "0"], "--experts must be >= 1"),
    ],
)
def test_error_paths_are_one_line(tmp_path, capsys, argv, message):
    good = tmp_path / "good"
    main(["baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", str(good)])
    corrupt = tmp_path / "corrupt"
    main(["baseline", "random", "--dataset", "digits", "--ipc", "1", "--out", str(corrupt)])
    (corrupt / "synset.safetensors").write_bytes(b"garbage")
    capsys.readouterr()
    argv = [
        a.replace("CORRUPT", str(corrupt)).replace("GOOD", str(good)).replace("X", str(tmp_path / "x")) for a in argv
    ]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distilset: error:") and message in lines[0]
