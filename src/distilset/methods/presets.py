"""Named settings: the papers' own (paper-*) and CPU-sized ones for the offline datasets (cpu-*).

A preset fixes the method, dataset, iteration budget and config fields; explicit options override it.
Paper presets follow REFERENCES.md; their iteration counts are the papers' (400 epochs over the real data).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distilset.errors import DistilsetError


@dataclass(frozen=True)
class Preset:
    method: str
    dataset: str
    iterations: int
    options: dict = field(default_factory=dict)
    note: str = ""


_LENET_FIXED_10 = {"net": "lenet", "init": "fixed", "steps": 1, "epochs": 3}  # 1 step x 10 classes x 1
_LENET_RANDOM_100 = {"net": "lenet", "init": "random", "steps": 10, "epochs": 3}  # 10 steps x 10 classes x 1
_ALEX_100 = {"net": "alexcifarnet", "steps": 10, "epochs": 3}
# 8x8 digits are nearly vectors: an MLP distils them fast (LeNet's second conv sees a padded 4x4 map). The
# outer lr halves once, at mid-run, instead of every 40 real epochs (which would halve it 7 times in 400).
_DIGITS = {"net": "mlp", "steps": 10, "epochs": 3, "decay_epochs": 150}
# mnist5k has 4000 training images: 40 of its epochs are only 160 iterations. Halve the outer lr every 2340
# iterations instead, where the paper's 40 MNIST epochs fall (40 x 60000 / 1024).
_MNIST5K_DECAY = {"decay_epochs": 600}

PRESETS: dict[str, Preset] = {
    # --- Dataset Distillation and soft labels, the papers' settings --------------------------------------
    "dd-mnist-fixed": Preset("dd", "mnist", 400 * 59, _LENET_FIXED_10, "paper: 10 images, fixed init, 93.8 %"),
    "dd-mnist-random": Preset("dd", "mnist", 400 * 59, {**_LENET_RANDOM_100, "n_nets": 4},
                              "paper: 100 images, random init, 79.5 +- 8.1 %"),
    "dd-cifar10-fixed": Preset("dd", "cifar10", 400 * 49, {**_ALEX_100, "init": "fixed"},
                               "paper: 100 images, fixed init, 54.0 %"),
    "dd-cifar10-random": Preset("dd", "cifar10", 400 * 49, {**_ALEX_100, "init": "random", "n_nets": 4},
                                "paper: 100 images, random init, 36.8 +- 1.2 %"),
    "sldd-mnist-fixed": Preset("dd", "mnist", 400 * 59, {**_LENET_FIXED_10, "soft_labels": True},
                               "soft-label paper: 10 images with learned labels, 96 %"),
    "sldd-mnist-5items": Preset("dd", "mnist", 400 * 59,
                                {**_LENET_FIXED_10, "soft_labels": True, "items": 5, "label_init": "random"},
                                "soft-label paper: 5 images for 10 classes, 92 %"),
    # --- CPU-sized ---------------------------------------------------------------------------------------
    "dd-digits-fixed": Preset("dd", "digits", 400, {**_DIGITS, "init": "fixed"}),
    "dd-digits-random": Preset("dd", "digits", 400, {**_DIGITS, "init": "random"}),
    "dd-mnist5k-fixed": Preset("dd", "mnist5k", 3000, {**_LENET_FIXED_10, **_MNIST5K_DECAY}),
    "dd-mnist5k-random": Preset("dd", "mnist5k", 1000, {**_LENET_RANDOM_100, **_MNIST5K_DECAY}),
    "dd-fashion-fixed": Preset("dd", "fashion-mnist", 3000, _LENET_FIXED_10),
    "dd-fashion-random": Preset("dd", "fashion-mnist", 1000, _LENET_RANDOM_100),
}  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DistilsetError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


# --- MTT: the paper's CIFAR-10 rows (REFERENCES.md [4]) and our settings for the offline grey-scale sets ------
# Run `distilset experts` first (paper: 100 experts x 50 epochs, ConvNet-3 width 128, ZCA for CIFAR-10).
_MTT_CIFAR = {"net": "convnet"}
# Fashion-MNIST / mnist5k have no paper row: the no-ZCA CIFAR-10 settings (lr_img 1000, lr_teacher 0.01) with
# shorter trajectories. The experts must cover max_start_epoch - 1 + expert_epochs epochs.
_MTT_GREY_1 = {
    "net": "convnet",
    "ipc": 1,
    "syn_steps": 50,
    "expert_epochs": 2,
    "max_start_epoch": 5,
    "lr_img": 1000.0,
    "lr_lr": 1e-7,
    "lr_teacher": 0.01,
}
_MTT_GREY_10 = {
    "net": "convnet",
    "ipc": 10,
    "syn_steps": 20,
    "expert_epochs": 2,
    "max_start_epoch": 10,
    "lr_img": 1000.0,
    "lr_lr": 1e-5,
    "lr_teacher": 0.01,
}
PRESETS.update({
    "mtt-cifar10-ipc1": Preset("mtt", "cifar10", 5000, {**_MTT_CIFAR, "ipc": 1, "syn_steps": 50, "expert_epochs": 2,
                               "max_start_epoch": 2, "lr_img": 100.0, "lr_lr": 1e-7, "lr_teacher": 0.01},
                               "paper: 46.3 % (ZCA)"),
    "mtt-cifar10-ipc10": Preset("mtt", "cifar10", 5000, {**_MTT_CIFAR, "ipc": 10, "syn_steps": 30,
                                "expert_epochs": 2, "max_start_epoch": 20, "lr_img": 100.0, "lr_lr": 1e-5,
                                "lr_teacher": 0.001}, "paper: 65.3 % (ZCA)"),
    "mtt-cifar10-ipc50": Preset("mtt", "cifar10", 5000, {**_MTT_CIFAR, "ipc": 50, "syn_steps": 30,
                                "expert_epochs": 2, "max_start_epoch": 40, "lr_img": 1000.0, "lr_lr": 1e-5,
                                "lr_teacher": 0.001}, "paper: 71.6 % (no ZCA)"),
    "mtt-fashion-ipc1": Preset("mtt", "fashion-mnist", 1000, _MTT_GREY_1),
    "mtt-fashion-ipc10": Preset("mtt", "fashion-mnist", 1000, _MTT_GREY_10),
    "mtt-mnist5k-ipc1": Preset("mtt", "mnist5k", 1000, _MTT_GREY_1),
    "mtt-mnist5k-ipc10": Preset("mtt", "mnist5k", 1000, _MTT_GREY_10),
})  # fmt: skip
