"""The method registry and the command line generated from it: every config field has a working flag, a foreign
flag is refused in one line, help lists only a method's own options, and a method registered here (in a test)
gets its subcommand, validation and resume checks without any edit elsewhere."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import distilset as ds
from distilset.cli import build_parser, config_options, main
from distilset.config import Config, FieldSpec, auto, field_specs, runtime_choices
from distilset.errors import ConfigError, DistilsetError
from distilset.methods import METHODS, MethodConfig, get_method, list_methods, register_method
from distilset.methods.registry import Preset, make_config
from distilset.recipes import Standard
from distilset.synset import SyntheticSet


def _value(spec: FieldSpec, cls: type) -> st.SearchStrategy:
    """Values a user could give for one field (the checks may still refuse some of them)."""
    choices = runtime_choices(cls, spec.name)
    if choices:
        return st.sampled_from(choices)
    if spec.base is bool:
        return st.booleans()
    if spec.base is int:
        return st.integers(1, 500)
    if spec.base is float:
        return st.floats(1e-4, 0.9, allow_nan=False)
    if spec.base is str:
        return st.from_regex(r"[a-z][a-z0-9_/.-]{0,12}", fullmatch=True)
    if spec.base is dict:
        return st.dictionaries(st.sampled_from(["width", "depth"]), st.integers(1, 64), min_size=1, max_size=2)
    if spec.nargs == "+":
        return st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)
    elem = st.integers(0, 9) if spec.elem is int else st.floats(0.0, 0.99)
    return st.tuples(*[elem] * spec.nargs)


def _argv(spec: FieldSpec, value: Any) -> list[str]:
    if spec.base is bool:
        return [spec.flag if value else "--no-" + spec.flag[2:]]
    if spec.base is dict:
        return [t for k, v in value.items() for t in (spec.flag, f"{k}={json.dumps(v)}")]
    if spec.base is tuple:
        return [spec.flag, *map(repr, value)]
    return [spec.flag, repr(value) if isinstance(value, float) else str(value)]


FIELDS = [(name, spec) for name in list_methods() for spec in field_specs(get_method(name).config)]


@pytest.mark.parametrize("method, spec", FIELDS, ids=[f"{m}-{s.name}" for m, s in FIELDS])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_config_field_round_trips_through_its_flag(method, spec, data):
    cls = get_method(method).config
    value = data.draw(_value(spec, cls))
    try:
        expected = cls(**{spec.name: value})
    except ConfigError:
        assume(False)  # a value the config's own checks refuse; tested elsewhere
    args, extra = build_parser().parse_known_args(["distill", method, "--dataset", "digits", "--out", "X",
                                                   *_argv(spec, value)])  # fmt: skip
    assert not extra
    given_options = config_options(args, cls)
    assert list(given_options) == [spec.name]  # only the flag given reaches the config ...
    assert make_config(get_method(method), given_options) == expected  # ... with the value given


OTHER = [("evaluate", Standard, ["evaluate", "SET"]), ("experts", ds.ExpertConfig, ["experts", "--dataset", "d",
                                                                                     "--out", "X"])]  # fmt: skip
OTHER_FIELDS = [(name, cls, argv, spec) for name, cls, argv in OTHER for spec in field_specs(cls)]


@pytest.mark.parametrize("command, cls, argv, spec", OTHER_FIELDS, ids=[f"{c}-{s.name}" for c, _, _, s in OTHER_FIELDS])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_evaluate_and_experts_options_round_trip(command, cls, argv, spec, data):
    """`distilset evaluate`'s training options are the Standard recipe's fields, `experts`' ExpertConfig's."""
    value = data.draw(_value(spec, cls))
    if cls is Standard and spec.name == "dsa":  # a strategy string, or none
        value = data.draw(st.sampled_from(["crop", "color_crop_cutout", None]))
    try:
        expected = cls(**{spec.name: value})
    except ConfigError:
        assume(False)
    token = ["none"] if value is None else None
    args, extra = build_parser().parse_known_args(argv + (_argv(spec, value) if token is None else [spec.flag, *token]))
    assert not extra and list(config_options(args, cls)) == [spec.name]
    assert cls(**config_options(args, cls)) == expected


@pytest.mark.parametrize("method", list_methods())
def test_help_lists_exactly_the_methods_options(method, capsys):
    with pytest.raises(SystemExit):
        main(["distill", method, "--help"])
    text = capsys.readouterr().out
    own = {s.flag for s in field_specs(get_method(method).config)}
    others = {s.flag for m in METHODS.values() for s in field_specs(m.config)} - own
    assert all(flag in text for flag in own)
    assert not [flag for flag in others if f"{flag} " in text or f"{flag}\n" in text]
    for spec in field_specs(get_method(method).config):  # every option has a line of help
        assert spec.doc, f"{method}.{spec.name} has no docstring"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["distill", "labels", "--ipc", "3"],
            "--ipc is not an option of `distill labels` "
            "(it belongs to dc, dd, dm, dsa, frepo, kip, ls, mtt, rded, sre2l)",
        ),
        (["distill", "mtt", "--steps", "7"], "--steps is not an option of `distill mtt` (it belongs to dd)"),
        (["distill", "dd", "--stepz", "7"], "unrecognized option --stepz for `distill dd`; did you mean --steps?"),
        (["distill", "labels", "--variant", "third"], "argument --variant: invalid choice: 'third'"),
        (["distill", "mtt", "--lr-img", "-1"], "--lr-img must be > 0, got -1.0"),
        (["distill", "dd", "--ipc", "two"], "argument --ipc: invalid int value: 'two'"),
        (["distill", "dd", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["distill", "dd", "--st", "3"], "unrecognized option --st"),  # no abbreviations
        (["evaluate", "SET", "--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
        (["evaluate", "SET", "--lr", "0"], "--lr must be > 0"),
        (["evaluate", "SET", "--steps", "10", "--ipc", "2"], "unrecognized argument(s): --ipc 2"),
    ],
)
def test_bad_options_are_one_line_errors_in_flag_terms(argv, message, tmp_path, digits, capsys):
    ds.baseline("random", digits, ipc=1).save(tmp_path / "set")
    argv = [a.replace("SET", str(tmp_path / "set")) for a in argv]
    if argv[0] == "distill":
        argv += ["--dataset", "digits", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("distilset: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_api_names_fields_and_suggests_close_ones(digits):
    with pytest.raises(ConfigError, match="unknown option.*for labels: ipc.*labels options: .*base"):
        ds.distill("labels", digits, ipc=3)
    with pytest.raises(ConfigError, match="did you mean syn_steps for syn_step"):
        ds.distill("mtt", digits, syn_step=3)
    with pytest.raises(ConfigError, match="^lr_img must be > 0, got 0"):
        ds.distill("mtt", digits, lr_img=0)
    with pytest.raises(
        DistilsetError, match="unknown method 'kipp'; available: dc, dd, dm, dsa, frepo, kip, labels, ls, mtt"
    ):
        ds.distill("kipp", digits)


# --- a method registered inside a test: one file + one registration, nothing else edited ---------------------


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    """Toy: class means nudged towards the real data (a test of the registry)."""

    ipc: int = 1
    """Images per class."""
    step: float = 0.1
    """How far each iteration moves an image towards a random real image of its class."""
    mode: Literal["mean", "first"] = "mean"
    """Start from class means or from the first image of each class."""
    width: int | None = auto("4 x the number of classes")
    """An option resolved from the dataset."""

    ITERATIONS: ClassVar[int] = 5
    RESUMABLE: ClassVar[tuple[str, ...]] = ("step",)
    NONFINITE_HINT: ClassVar[str] = "lower `step`"

    def check(self) -> None:
        self.require_positive("step")

    def resolve(self, data):
        return self.fill(width=(4 * data.num_classes, "4 x classes"))


class Toy:
    def __init__(self, data, cfg: ToyConfig, ctx):
        self.data, self.cfg, self.g = data, cfg, torch.Generator().manual_seed(ctx.seed)
        self.labels = torch.arange(data.num_classes).repeat_interleave(cfg.ipc)
        self.images = torch.stack([data.train_x[data.train_y == c].mean(0) for c in self.labels.tolist()])

    def step(self, iteration):
        idx = torch.randint(len(self.data.train_x), (len(self.labels),), generator=self.g)
        self.images += self.cfg.step * (self.data.train_x[idx] - self.images)
        if not torch.isfinite(self.images).all():
            from distilset.methods import NonFiniteError

            raise NonFiniteError("images are not finite")
        return {"loss": float(self.images.abs().mean())}

    def state_dict(self):
        return {"images": self.images.clone(), "g": self.g.get_state()}

    def load_state_dict(self, state):
        self.images, _ = state["images"].clone(), self.g.set_state(state["g"])

    def synthetic_set(self):
        return SyntheticSet.for_dataset(self.data, self.images.clone(), self.labels.clone(), "toy",
                                        recipe=Standard(epochs=20, lr=0.05))  # fmt: skip


@pytest.fixture()
def toy():
    register_method("toy", ToyConfig, lambda data, cfg, ctx: Toy(data, cfg, ctx),
                    presets={"toy-big": Preset("digits", 3, {"ipc": 2})})  # fmt: skip
    yield METHODS["toy"]
    del METHODS["toy"]


def test_a_method_registered_in_a_test_gets_its_command(toy, tmp_path, capsys, digits):
    out = tmp_path / "toy"
    assert main(["distill", "toy", "--dataset", "digits", "--mode", "first", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "auto width: 4 x classes" in printed and "mode=first" in printed
    syn = SyntheticSet.load(out)
    assert syn.config == {"method": "toy", "ipc": 1, "step": 0.1, "mode": "first", "width": 40}
    assert syn.extra["iterations"] == 5 and syn.extra["resolved"] == {"width": "4 x classes"}
    assert main(["evaluate", str(out), "--net", "mlp", "--repeats", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["epochs"] == 20  # the method's recipe is used
    # its options are validated, foreign ones refused, presets found
    assert main(["distill", "toy", "--dataset", "digits", "--step", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--step must be > 0, got -1.0" in capsys.readouterr().err
    assert main(["distill", "toy", "--dataset", "digits", "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--steps is not an option of `distill toy` (it belongs to dd)" in capsys.readouterr().err
    assert main(["distill", "toy", "--preset", "toy-big", "--out", str(tmp_path / "p")]) == 0
    assert len(SyntheticSet.load(tmp_path / "p")) == 20 and SyntheticSet.load(tmp_path / "p").extra["iterations"] == 3
    # resume: a resumable field may change, any other setting is named
    assert main(["distill", "toy", "--dataset", "digits", "--iterations", "8", "--step", "0.2", "--resume",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "it was made with --mode 'first', this run has 'mean'" in capsys.readouterr().err
    assert main(["distill", "toy", "--dataset", "digits", "--mode", "first", "--iterations", "8", "--step", "0.2",
                 "--resume", "--out", str(out)]) == 0  # fmt: skip
    assert SyntheticSet.load(out).extra["iterations"] == 8


def test_registry_refuses_option_names_it_cannot_serve():
    @dataclass(frozen=True)
    class Clash(MethodConfig):
        seed: int = 0
        """Clashes with the shared --seed."""

    with pytest.raises(ValueError, match="option name.*seed.*every method shares"):
        register_method("clash", Clash, lambda *a: None)

    @dataclass(frozen=True)
    class Odd(MethodConfig):
        weights: list = None
        """No flag can carry this."""

    with pytest.raises(TypeError, match="unsupported option type"):
        register_method("odd", Odd, lambda *a: None)
    assert "clash" not in METHODS and "odd" not in METHODS


def test_generic_type_checks_come_from_the_annotations():
    @dataclass(frozen=True)
    class C(Config):
        n: int = 1
        """n"""
        x: float = 0.5
        """x"""
        kind: Literal["a", "b"] = "a"
        """kind"""
        pair: tuple[int, int] = (0, 1)
        """pair"""

    assert C(x=1).x == 1.0 and isinstance(C(x=1).x, float)  # ints are fine where floats are asked for
    assert C(pair=[2, 3]).pair == (2, 3)  # JSON lists come back as tuples
    for bad, message in (({"n": 1.5}, "n must be a whole number"), ({"n": True}, "whole number"),
                         ({"kind": "c"}, "kind must be one of a, b"), ({"pair": (1,)}, "pair needs 2 values"),
                         ({"x": "fast"}, "x must be a number")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            C(**bad)


@pytest.mark.parametrize("method, preset", [(m.name, p) for m in METHODS.values() for p in m.presets])
def test_every_preset_is_a_valid_config_of_its_method(method, preset):
    p = get_method(method).presets[preset]
    cfg = make_config(get_method(method), {}, p)
    assert all(getattr(cfg, k) == (tuple(v) if isinstance(v, list) else v) for k, v in p.options.items())
    assert p.iterations >= 1 and p.dataset


@pytest.mark.parametrize("method", ["dd", "dm"])
def test_eval_every_scores_held_out_training_images_never_the_test_split(method, digits, tmp_path):
    """With the test split poisoned (NaN images, all labelled 0), monitoring reports the set's accuracy on
    training images held out of the distillation (the same ones every time), not on the test split."""
    poisoned = dataclasses.replace(digits, test_x=torch.full_like(digits.test_x, float("nan")),
                                   test_y=torch.zeros_like(digits.test_y))  # fmt: skip
    small_dm = {"net_kwargs": {"width": 16}, "real_batch": 32, "ipc": 1, "dsa": False}
    options = small_dm if method == "dm" else {"net": "mlp"}
    lines = []
    ds.distill(method, poisoned, iterations=2, eval_every=2, out=tmp_path, log=lines.append, **options)
    history = json.loads((tmp_path / "history.json").read_text())
    rest, validation = digits.validation_split()
    on_validation = ds.evaluate(ds.SyntheticSet.load(tmp_path), validation, repeats=1, seed=777)
    assert history[-1]["val_acc"] == on_validation.accuracy_mean and 0 < on_validation.accuracy_mean < 1
    assert len(rest.train_x) + len(validation.test_x) == len(digits.train_x) and len(validation.test_x) == 140
    assert any("140 held-out training images" in line for line in lines)
