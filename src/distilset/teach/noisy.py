"""Learning from noisy labels with distillation (Li, Yang, Song, Cao, Luo, Li; ICCV 2017).

Read beside the paper's section 3:

1. **Data**: a small clean share of the training images (``clean`` of every class) keeps its true labels; the
   other labels are corrupted here (``noise``: ``symmetric`` moves a label to a uniformly drawn other class,
   ``pairs`` swaps it with its partner class, partners matched greedily by the distance between class-mean
   images: on Fashion-MNIST that pairs shirt/T-shirt-like and sandal/sneaker-like classes) with probability
   ``noise_rate``. A ``validation`` share of the clean images is held out to choose lambda; the rest, D_c,
   trains the teacher.
2. **Teacher** f_c: trained on D_c. Its soft labels on the noisy images: s = softmax(f_c(x) / T).
3. **Label graph** G (optional, ``graph``): the paper propagates s through relations between classes taken
   from a knowledge graph. Offline and for any dataset, distilset builds G from the teacher's confusions on the
   held-out clean images: G[i, j] estimates P(true class j | teacher says i) (soft counts plus one on the
   diagonal, rows normalised), and G(s) = s G.
4. **Pseudo labels** y = lambda y_noisy + (1 - lambda) G(s) for the noisy images (the clean ones keep their
   labels); a fresh **student** is trained on all of them by soft cross-entropy, for each lambda of ``lambdas``;
   the lambda with the best accuracy on the held-out clean images is the run's answer.
5. **Baselines** (``baselines``): noisy labels only (lambda = 1), clean only (the teacher) and a student trained
   on the noisy labels then fine-tuned on D_c (``teacher_steps`` steps at a tenth of the lr).

Outputs: ``models/teacher``, ``models/student`` (the chosen lambda's) and ``models/finetuned``;
``labels.safetensors``: ``clean_index`` and ``validation_index`` (into the training split), ``noisy_label`` for
every training image (clean ones unchanged), ``soft_label`` (G(s), the teacher's propagated soft labels) and
``pseudo_label`` (the chosen lambda's y); ``graph`` (G, when used); ``teach.png``: the lambda sweep (validation
and test accuracy) beside the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from distilset.config import auto
from distilset.data.dataset import Dataset
from distilset.errors import ConfigError
from distilset.methods.base import Context
from distilset.teach.base import (
    Model,
    OneNet,
    Taught,
    TeachConfig,
    check_share,
    claim,
    predict,
    register_system,
    split_per_class,
    test_accuracy,
    train,
)
from distilset.train import accuracy


@dataclass(frozen=True)
class NoisyConfig(OneNet, TeachConfig):
    """Learning from noisy labels with distillation (Li et al. 2017): a teacher trained on a small clean set
    softens the noisy labels of the rest, y = lambda y_noisy + (1 - lambda) G(s)."""

    clean: float | None = auto("2 % of each class, at least 10 images per class")
    """Share of each class's training images whose labels stay clean (the teacher's data and the validation)."""
    noise: Literal["symmetric", "pairs"] = "symmetric"
    """Label noise on the other images: to a random other class, or swapped with the most similar class."""
    noise_rate: float = 0.4
    """Probability that a label of the noisy part is corrupted."""
    temperature: float = 1.0
    """Softmax temperature T of the teacher's soft labels."""
    graph: Literal["none", "confusion"] = "none"
    """Propagate the soft labels through a label graph built from the teacher's confusions on the validation."""
    lambdas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    """Weights of the noisy labels to sweep; one student each, the best on the clean validation is chosen."""
    validation: float = 0.25
    """Share of the clean images held out to choose lambda (at least one per class)."""
    teacher_steps: int = 500
    """Minibatch steps of the teacher on the clean images."""
    student_steps: int = 1500
    """Minibatch steps of each student on all images."""
    baselines: bool = True
    """Also train the noisy-then-clean fine-tuned baseline (and lambda = 1 when the sweep lacks it)."""

    def check(self) -> None:
        super().check()
        check_share(self, "clean", "validation")
        self.require_positive("temperature", "teacher_steps", "student_steps")
        if not 0 <= self.noise_rate <= 1:
            raise ConfigError(f"`noise_rate` must be a probability in [0, 1], got {self.noise_rate}")
        if any(not 0 <= lam <= 1 for lam in self.lambdas):
            raise ConfigError(f"`lambdas` must lie in [0, 1], got {list(self.lambdas)}")

    def resolve(self, data: Dataset) -> tuple[NoisyConfig, dict[str, str]]:
        smallest = int(torch.bincount(data.train_y.cpu(), minlength=data.num_classes).min())
        share = min(0.5, max(0.02, 10 / max(smallest, 1)))
        return self.fill_one_net(
            data,
            clean=(share, f"{100 * share:.3g} % of each class: 2 %, at least 10 of the smallest class ({smallest})"),
        )


def partners(data: Dataset) -> torch.Tensor:
    """Each class's partner for pair noise: greedy matching of the closest class-mean images (an odd class out
    keeps itself)."""
    k = data.num_classes
    means = torch.stack([data.train_x[data.train_y == c].flatten(1).mean(0) for c in range(k)])
    dist = torch.cdist(means, means)
    dist.fill_diagonal_(float("inf"))
    partner = torch.arange(k)
    free = set(range(k))
    for flat in dist.flatten().argsort().tolist():
        i, j = divmod(flat, k)
        if i in free and j in free and i != j:
            partner[i], partner[j] = j, i
            free -= {i, j}
    return partner


def corrupt(
    y: torch.Tensor, cfg: NoisyConfig, num_classes: int, partner: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    flip = torch.rand(len(y), generator=g) < cfg.noise_rate
    if cfg.noise == "pairs":
        other = partner[y.cpu()]
    else:  # a uniformly drawn class other than the true one
        other = (y.cpu() + torch.randint(1, num_classes, (len(y),), generator=g)) % num_classes
    return torch.where(flip, other, y.cpu()).to(y.device)


def confusion_graph(teacher: Model, x: torch.Tensor, y: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """G[i, j] ~ P(true class j | teacher says i) from the teacher's soft predictions on clean images."""
    s = predict(teacher, x, temperature=temperature)
    counts = s.T @ F.one_hot(y, k).float() + torch.eye(k, device=x.device)
    return counts / counts.sum(1, keepdim=True)


def run_noisy(data: Dataset, cfg: NoisyConfig, ctx: Context) -> Taught:
    g = torch.Generator().manual_seed(ctx.seed)
    k, shape, dev = data.num_classes, data.image_shape, data.train_x.device
    clean_idx, noisy_idx = (i.to(dev) for i in split_per_class(data, cfg.clean, g, what="`clean`"))
    clean_data = Dataset(data.info, data.train_x[clean_idx], data.train_y[clean_idx], data.test_x, data.test_y)
    val_idx, fit_idx = (clean_idx[i.to(dev)] for i in split_per_class(clean_data, cfg.validation, g, "`validation`"))
    partner = partners(data)
    noisy_y = data.train_y.clone()
    noisy_y[noisy_idx] = corrupt(data.train_y[noisy_idx], cfg, k, partner, g)
    x_val, y_val = data.train_x[val_idx], data.train_y[val_idx]
    rate = float((noisy_y[noisy_idx] != data.train_y[noisy_idx]).float().mean())
    ctx.log(
        f"  clean: {len(fit_idx)} teacher + {len(val_idx)} validation images; noisy: {len(noisy_idx)} "
        f"({100 * rate:.1f} % of their labels wrong)"
    )
    fresh = lambda offset: Model.fresh(cfg.net, cfg.net_kwargs, shape, k, seed=ctx.seed + offset, device=ctx.device)  # noqa: E731

    teacher = fresh(0)
    train(
        teacher,
        data.train_x[fit_idx],
        data.train_y[fit_idx],
        cfg.recipe(cfg.teacher_steps),
        seed=ctx.seed,
        progress=ctx.progress,
        desc="noisy: teacher",
    )
    acc_teacher = test_accuracy(teacher, data)
    ctx.log(f"  teacher (clean only): {100 * acc_teacher:.2f} % test accuracy")
    graph = confusion_graph(teacher, x_val, y_val, k, cfg.temperature) if cfg.graph == "confusion" else None
    soft = predict(teacher, data.train_x[noisy_idx], temperature=cfg.temperature)
    if graph is not None:
        soft = soft @ graph

    # every student trains on the clean teacher images (true labels) and the noisy images (pseudo labels)
    x_all = torch.cat([data.train_x[fit_idx], data.train_x[noisy_idx]])
    y_clean = F.one_hot(data.train_y[fit_idx], k).float()
    y_noisy = F.one_hot(noisy_y[noisy_idx], k).float()
    sweep: list[dict[str, float]] = []
    students: dict[float, Model] = {}
    lambdas = sorted(set(cfg.lambdas) | ({1.0} if cfg.baselines else set()))
    for n, lam in enumerate(lambdas):
        pseudo = lam * y_noisy + (1 - lam) * soft
        student = fresh(1 + n)
        train(
            student,
            x_all,
            torch.cat([y_clean, pseudo]),
            cfg.recipe(cfg.student_steps),
            seed=ctx.seed + 1 + n,
            progress=ctx.progress,
            desc=f"noisy: student, lambda {lam:g}",
        )
        row = {
            "lambda": lam,
            "validation": accuracy(student.module, x_val, y_val),
            "test": test_accuracy(student, data),
        }
        sweep.append(row)
        students[lam] = student
        ctx.log(f"  lambda {lam:g}: validation {100 * row['validation']:.2f} %, test {100 * row['test']:.2f} %")
    chosen_rows = [r for r in sweep if r["lambda"] in cfg.lambdas]
    best = max(chosen_rows, key=lambda r: (r["validation"], -abs(r["lambda"] - 0.5)))
    models = {"teacher": teacher, "student": students[best["lambda"]]}
    by_lambda = {r["lambda"]: r for r in sweep}
    report: dict[str, Any] = {
        "clean": len(fit_idx),
        "validation": len(val_idx),
        "noisy": len(noisy_idx),
        "wrong_label_share": rate,
        "partners": partner.tolist() if cfg.noise == "pairs" else None,
        "teacher_accuracy": acc_teacher,
        "sweep": sweep,
        "chosen_lambda": best["lambda"],
        "student_accuracy": best["test"],
        "noisy_only_accuracy": by_lambda[1.0]["test"] if 1.0 in by_lambda else None,
    }
    if cfg.baselines:
        finetuned = fresh(99)
        finetuned.module.load_state_dict(students[1.0].module.state_dict())
        train(
            finetuned,
            data.train_x[fit_idx],
            data.train_y[fit_idx],
            cfg.recipe(cfg.teacher_steps, lr=cfg.lr / 10),
            seed=ctx.seed + 99,
            progress=ctx.progress,
            desc="noisy: clean fine-tuning",
        )
        report["finetuned_accuracy"] = test_accuracy(finetuned, data)
        models["finetuned"] = finetuned
        ctx.log(f"  noisy labels then clean fine-tuning: {100 * report['finetuned_accuracy']:.2f} %")
    interior = [r for r in chosen_rows if 0 < r["lambda"] < 1]
    if interior and 0.0 in by_lambda and 1.0 in by_lambda:
        top = max(interior, key=lambda r: (r["validation"], -abs(r["lambda"] - 0.5)))
        ends = {"lambda_0": by_lambda[0.0]["test"], "lambda_1": by_lambda[1.0]["test"]}
        report["claims"] = [
            claim(
                "the interior lambda chosen on the clean validation beats both ends on test",
                top["test"] > max(ends.values()),
                {"interior_lambda": top["lambda"], "interior": top["test"], **ends},
            )
        ]
        if cfg.baselines:
            rivals = {"clean_only": acc_teacher, "finetuned": report["finetuned_accuracy"]}
            report["claims"].append(
                claim(
                    "it beats the clean-only teacher and clean fine-tuning",
                    top["test"] > max(rivals.values()),
                    {"interior": top["test"], **rivals},
                )
            )
    lam = best["lambda"]
    labels = {
        "clean_index": fit_idx,
        "validation_index": val_idx,
        "noisy_index": noisy_idx,
        "noisy_label": noisy_y,
        "soft_label": soft,
        "pseudo_label": lam * y_noisy + (1 - lam) * soft,
    }
    if graph is not None:
        labels["graph"] = graph
    return Taught(models, labels, report, picture=lambda: _picture(report, data.info.name, cfg))


def _picture(report: dict, dataset: str, cfg: NoisyConfig):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    lams = [r["lambda"] for r in report["sweep"]]
    ax.plot(lams, [100 * r["test"] for r in report["sweep"]], "-o", color="black", label="student, test")
    ax.plot(
        lams,
        [100 * r["validation"] for r in report["sweep"]],
        "--s",
        color="black",
        markersize=4,
        label="student, clean validation",
    )
    ax.axhline(100 * report["teacher_accuracy"], color="grey", linestyle=":", label="clean only (teacher)")
    if "finetuned_accuracy" in report:
        ax.axhline(
            100 * report["finetuned_accuracy"], color="grey", linestyle="-.", label="noisy, then clean fine-tune"
        )
    ax.axvline(report["chosen_lambda"], color="grey", linewidth=0.8)
    ax.set(
        xlabel="lambda (weight of the noisy label)",
        ylabel="accuracy (%)",
        title=f"{dataset}: {100 * cfg.noise_rate:.0f} % {cfg.noise} noise, graph {cfg.graph}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


register_system("noisy", NoisyConfig, run_noisy)
__all__ = ["NoisyConfig", "corrupt", "partners", "run_noisy"]
