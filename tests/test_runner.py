"""The runner runs any registered method through the same steps, and knows none by name; run options are declared
once (``RunOptions``) for the API, its signature, the command line and the checks; old option names still work."""

from __future__ import annotations

import ast
import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

import distilset as ds
from distilset.cli import build_parser, main
from distilset.config import auto, field_specs
from distilset.data.registry import SOURCES
from distilset.errors import ConfigError
from distilset.methods import METHODS, runner
from distilset.methods.base import Distiller, MethodConfig, NonFiniteError, RunOptions
from distilset.recipes import Standard
from distilset.synset import SyntheticSet

RESOLVES: list[int] = []


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    """A toy method: one image per class pulled towards its class mean."""

    lr: float | None = auto("0.5")
    """Step size."""
    explode_at: int = -1
    """The iteration whose loss turns NaN (-1: never)."""

    ITERATIONS: ClassVar[int] = 5
    RESUMABLE: ClassVar[tuple[str, ...]] = ("explode_at",)

    def resolve(self, data: Any) -> tuple[ToyConfig, dict[str, str]]:
        RESOLVES.append(1)
        return self.fill(lr=(0.5, "a toy's"))


class Toy(Distiller):
    def __init__(self, data, cfg: ToyConfig, ctx=None, *, start: torch.Tensor):
        super().__init__(data, cfg, ctx)
        self.images = start.clone().requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=self.cfg.lr)
        self.means = torch.stack([data.train_x[data.train_y == c].mean(0) for c in range(data.num_classes)])

    def outer_step(self, iteration: int) -> dict[str, float]:
        noise = torch.randn(self.images.shape, generator=self.generator) * 0.01  # draws: the rewind must undo them
        loss = (self.images + noise - self.means).pow(2).sum((1, 2, 3)).mean()
        if iteration == self.cfg.explode_at:
            loss = loss * float("nan")
        return {"loss": self.descend(self.optimizer, loss, "the toy's loss")}

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.detach().clone(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
        self.generator.set_state(state["generator"])

    def synthetic_set(self) -> SyntheticSet:
        labels = torch.arange(self.data.num_classes)
        return SyntheticSet.for_dataset(
            self.data, self.images.detach().clone(), labels, method="toy", recipe=Standard(epochs=5)
        )


PREPARED: list[Path | None] = []


def _prepare(data, cfg: ToyConfig, ctx) -> dict[str, Any]:
    """Side work before the distiller: here, its start (zeros), made once the output directory is ready."""
    PREPARED.append(ctx.out)
    return {"start": torch.zeros(data.num_classes, *data.image_shape)}


@pytest.fixture
def toy():
    ds.register_method("toy", ToyConfig, Toy, prepare=_prepare)
    RESOLVES.clear()
    PREPARED.clear()
    yield METHODS["toy"]
    del METHODS["toy"]


def test_a_registered_toy_method_runs_with_its_prepare_hook_resolved_once(toy, digits, tmp_path):
    syn = ds.distill("toy", digits, out=tmp_path / "run")
    assert RESOLVES == [1]  # the runner resolves once; the distiller takes that config as it is
    assert [tmp_path / "run"] == PREPARED  # the hook ran with the prepared directory
    means = torch.stack([digits.train_x[digits.train_y == c].mean(0) for c in range(10)])
    assert (syn.images - means).pow(2).mean() < 0.5 * means.pow(2).mean()  # it learned from the zeros it was given
    assert syn.config["lr"] == 0.5 and syn.extra["resolved"] == {"lr": "a toy's"}
    assert ds.SyntheticSet.load(tmp_path / "run").method == "toy"


def test_a_toy_run_resumes_to_the_same_set_and_a_nan_rewinds_its_generator(toy, digits, tmp_path):
    full = ds.distill("toy", digits, iterations=6)
    ds.distill("toy", digits, iterations=3, out=tmp_path)
    resumed = ds.distill("toy", digits, iterations=6, out=tmp_path, resume=True)
    assert torch.equal(full.images, resumed.images)
    with pytest.raises(ds.DistilsetError, match=r"the toy's loss is not finite \(loss nan\) at outer iteration 4"):
        ds.distill("toy", digits, iterations=6, out=tmp_path / "nan", explode_at=4)
    # the state saved at the stop replays iteration 4 exactly: the generator was put back where it found it
    again = ds.distill("toy", digits, iterations=6, out=tmp_path / "nan", resume=True)
    assert torch.equal(again.images, full.images)


def test_the_runner_names_no_method_and_no_dataset():
    tree = ast.parse(Path(runner.__file__).read_text())
    literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    named = literals & (set(METHODS) | set(SOURCES))
    assert not named, f"runner.py branches on {named}"


def test_the_run_options_are_declared_once_for_the_signature_the_cli_and_the_checks(capsys):
    fields = [s.name for s in field_specs(RunOptions)]
    assert set(fields) <= set(inspect.signature(ds.distill).parameters)
    flags = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["distill"]._subparsers
             ._group_actions[0].choices["dm"]._actions}  # fmt: skip
    assert set(fields) - {"progress", "data_root", "download"} <= flags
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 1"):
        ds.distill("dm", ds.load_dataset("digits"), checkpoint_every=0)
    code = main(["distill", "dm", "--dataset", "digits", "--out", "x", "--checkpoint-every", "0"])
    assert code == 2 and "--checkpoint-every must be >= 1" in capsys.readouterr().err


def test_old_option_names_work_for_a_release_with_a_warning(digits, tmp_path, capsys):
    with pytest.warns(FutureWarning, match="`batch_real` is now `real_batch`"):
        syn = ds.distill("dm", digits, iterations=1, batch_real=16, ipc=1, net_kwargs={"width": 8})
    assert syn.config["real_batch"] == 16
    with pytest.warns(FutureWarning, match="`init` is now `net_init`"):
        syn = ds.distill("dd", digits, iterations=1, init="random", net="mlp", steps=1, epochs=1)
    assert syn.config["net_init"] == "random" and syn.recipe.init == "random"
    with pytest.raises(ConfigError, match="batch_real is the old name of real_batch"):
        ds.distill("dm", digits, iterations=1, batch_real=16, real_batch=16)
    argv = ["distill", "dm", "--dataset", "digits", "--iterations", "1", "--ipc", "1", "--net-arg", "width=8"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert main([*argv, "--out", str(tmp_path / "a"), "--batch-real", "16"]) == 0
    assert "distilset: --batch-real is now --real-batch" in capsys.readouterr().err
    assert ds.SyntheticSet.load(tmp_path / "a").config["real_batch"] == 16
    assert main([*argv, "--out", str(tmp_path / "b"), "--batch-real", "16", "--real-batch", "8"]) == 2
    assert "--batch-real is the old name of --real-batch" in capsys.readouterr().err


def test_a_distiller_built_by_hand_resolves_its_config_once(digits):
    from distilset.methods.dm import DistributionMatching, DMConfig

    dm = DistributionMatching(digits, DMConfig(ipc=1, net_kwargs={"width": 8}))
    assert dm.cfg.resolved and dm.cfg.net == "convnet" and dm.cfg.net_kwargs["depth"] == 2


def test_nonfinite_error_is_what_check_finite_raises():
    from distilset.methods.base import check_finite

    check_finite("x", 1.0, torch.ones(2))
    with pytest.raises(NonFiniteError, match="x is not finite"):
        check_finite("x", 1.0, torch.tensor([1.0, float("inf")]))


def test_a_flag_renamed_for_consistency_still_works_with_a_line(capsys):
    from distilset.cli import build_parser, config_options
    from distilset.teach import SYSTEMS

    args = build_parser().parse_args(["teach", "omni", "--dataset", "digits", "--out", "x", "--net-kwargs", "width=8"])
    assert config_options(args, SYSTEMS["omni"].config)["net_kwargs"] == {"width": 8}
    assert "--net-kwargs is now --net-arg" in capsys.readouterr().err


def test_run_options_take_paths_and_torch_devices_as_pytorch_users_write_them(digits, tmp_path):
    opts = RunOptions(out=tmp_path, data_root=tmp_path / "data", device=torch.device("cpu"), iterations=2)
    assert opts.device == "cpu" and opts.context(None, None).data_root == str(tmp_path / "data")
    with pytest.raises(ConfigError, match="device cuda:x is not a device"):
        RunOptions(device="cuda:x")
