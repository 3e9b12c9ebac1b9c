"""DSA: differentiable siamese augmentation (Zhao & Bilen 2021), shared by distillation and evaluation.

Every transform is built from arithmetic, ``affine_grid``/``grid_sample`` or gathers, so gradients reach the
input images. One random transform from the strategy is applied per call (``color`` applies brightness,
saturation and contrast together). With ``siamese=True`` one set of random parameters is drawn for the whole
batch, and the same ``seed`` gives the same transform on a real and a synthetic batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distilset.errors import DistilsetError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """The DSA parameters of Zhao & Bilen (ICML 2021) and their released code."""

    scale: float = 1.2
    rotate: float = 15.0  # degrees
    crop: float = 0.125  # fraction of the side, translation with zero padding
    cutout: float = 0.5  # fraction of the side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


def check_strategy(strategy: str) -> list[str]:
    ops = [o for o in strategy.split("_") if o]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise DistilsetError(f"unknown DSA op(s) {bad or strategy!r} in strategy {strategy!r}; ops: {', '.join(OPS)}")
    return ops


def _rand(n: int, g: torch.Generator, siamese: bool, device) -> torch.Tensor:
    r = torch.rand(1 if siamese else n, generator=g)
    return r.expand(n).to(device) if siamese else r.to(device)


def _randint(low: int, high: int, n: int, g: torch.Generator, siamese: bool, device) -> torch.Tensor:
    r = torch.randint(low, high, (1 if siamese else n,), generator=g)
    return r.expand(n).to(device) if siamese else r.to(device)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x, p, g, siamese):
    n = len(x)
    sx = _rand(n, g, siamese, x.device) * (p.scale - 1 / p.scale) + 1 / p.scale
    sy = _rand(n, g, siamese, x.device) * (p.scale - 1 / p.scale) + 1 / p.scale
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, zero], 1), torch.stack([zero, sy, zero], 1)], 1)
    return _affine(x, theta)


def _rotate(x, p, g, siamese):
    n = len(x)
    a = (_rand(n, g, siamese, x.device) - 0.5) * 2 * p.rotate / 180 * math.pi
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([a.cos(), a.sin(), zero], 1), torch.stack([-a.sin(), a.cos(), zero], 1)], 1)
    return _affine(x, theta)


def _flip(x, p, g, siamese):
    r = _rand(len(x), g, siamese, x.device) < 0.5
    return torch.where(r.view(-1, 1, 1, 1), x.flip(3), x)


def _color(x, p, g, siamese):
    n = len(x)
    x = x + (_rand(n, g, siamese, x.device).view(-1, 1, 1, 1) - 0.5) * p.brightness
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(n, g, siamese, x.device).view(-1, 1, 1, 1) * p.saturation) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(n, g, siamese, x.device).view(-1, 1, 1, 1) + p.contrast) + m


def _crop(x, p, g, siamese):
    """Translate by up to crop * side pixels, filling with zeros (a gather, so gradients flow)."""
    n, _, h, w = x.shape
    sh, sw = int(h * p.crop + 0.5), int(w * p.crop + 0.5)
    dy = _randint(-sh, sh + 1, n, g, siamese, x.device)
    dx = _randint(-sw, sw + 1, n, g, siamese, x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) + dy.view(-1, 1, 1) + 1
    xs = torch.arange(w, device=x.device).view(1, 1, w) + dx.view(-1, 1, 1) + 1
    ys, xs = ys.clamp(0, h + 1).expand(n, h, w), xs.clamp(0, w + 1).expand(n, h, w)
    padded = F.pad(x, [1, 1, 1, 1])  # out-of-range indices land on the zero border
    b = torch.arange(n, device=x.device).view(-1, 1, 1).expand(n, h, w)
    # the gather leaves the channels last; back to the NCHW strides every other op returns
    return padded.permute(0, 2, 3, 1)[b, ys, xs].permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)


def _cutout(x, p, g, siamese):
    n, _, h, w = x.shape
    ch, cw = int(h * p.cutout + 0.5), int(w * p.cutout + 0.5)
    cy = _randint(0, h + (1 - ch % 2), n, g, siamese, x.device)
    cx = _randint(0, w + (1 - cw % 2), n, g, siamese, x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside_y = (ys >= (cy - ch // 2).view(-1, 1, 1)) & (ys < (cy - ch // 2 + ch).view(-1, 1, 1))
    inside_x = (xs >= (cx - cw // 2).view(-1, 1, 1)) & (xs < (cx - cw // 2 + cw).view(-1, 1, 1))
    mask = ~(inside_y & inside_x)
    return x * mask.unsqueeze(1).to(x.dtype)


_APPLY = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}


def dsa(
    x: torch.Tensor,
    strategy: str = "color_crop_cutout_flip_scale_rotate",
    seed: int | None = None,
    params: DSAParams = DSAParams(),
    siamese: bool = True,
) -> torch.Tensor:
    """Apply one random DSA transform from ``strategy`` to the batch ``x`` (N, C, H, W).

    ``seed``: the same seed gives the same op and parameters (pass it for a real and a synthetic batch);
    ``None`` draws fresh randomness from the global generator. ``siamese``: one parameter set per batch
    (distillation) instead of one per image (evaluation).
    """
    if x.ndim != 4:
        raise DistilsetError(f"DSA expects images (N, C, H, W), got shape {tuple(x.shape)}")
    ops = check_strategy(strategy)
    g = torch.Generator()
    g.manual_seed(int(torch.randint(0, 2**62, (1,)).item()) if seed is None else seed)
    op = ops[int(torch.randint(len(ops), (1,), generator=g).item())]
    return _APPLY[op](x, params, g, siamese)


def toroidal_crop(canvas: torch.Tensor, size: tuple[int, int], seed: int) -> torch.Tensor:
    """A random ``size`` crop of each canvas (N, C, H', W') after a random toroidal roll (texture mode).

    Rolling wraps the canvas around like a torus, so every crop position is valid and training on the
    crops makes the canvas tile seamlessly. Differentiable in ``canvas``; the same seed gives the same crops.
    """
    n, _, hc, wc = canvas.shape
    h, w = size
    if h > hc or w > wc:
        raise DistilsetError(f"crop {size} is larger than the canvas {(hc, wc)}")
    g = torch.Generator().manual_seed(seed)
    dy = torch.randint(hc, (n,), generator=g).tolist()
    dx = torch.randint(wc, (n,), generator=g).tolist()
    crops = [torch.roll(canvas[i], shifts=(-dy[i], -dx[i]), dims=(-2, -1))[:, :h, :w] for i in range(n)]
    return torch.stack(crops)


# ---- the views of the teacher recipe (SRe2L / RDED evaluation; FKD's relabelled crops) -----------------------------
def random_boxes(
    n: int, size: tuple[int, int], scale: tuple[float, float], g: torch.Generator, ratio=(3 / 4, 4 / 3), tries: int = 10
) -> torch.Tensor:
    """``n`` crop boxes (top, left, height, width), in pixels, drawn as torchvision's ``RandomResizedCrop`` draws
    them: an area share in ``scale`` and a log-uniform aspect ratio in ``ratio``, up to ``tries`` draws per box
    until one fits, else the central crop of the largest box of an allowed ratio; its position uniform."""
    h, w = size
    area = h * w
    shares = torch.empty(n, tries).uniform_(scale[0], scale[1], generator=g) * area
    log_r = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = log_r.exp()
    bw, bh = (shares * r).sqrt().round(), (shares / r).sqrt().round()
    fits = (bw >= 1) & (bw <= w) & (bh >= 1) & (bh <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    ch, cw = bh[rows, first.clamp_min(0)], bw[rows, first.clamp_min(0)]
    fh, fw = float(h), float(w)  # no draw fits: the whole image, cut to the nearest allowed ratio, centred
    if w / h < ratio[0]:
        fh = float(round(w / ratio[0]))
    elif w / h > ratio[1]:
        fw = float(round(h * ratio[1]))
    none = first < 0
    ch, cw = torch.where(none, torch.tensor(fh), ch), torch.where(none, torch.tensor(fw), cw)
    u = torch.rand(n, 2, generator=g)
    top = torch.where(none, ((h - ch) / 2).floor(), (u[:, 0] * (h - ch + 1)).floor())
    left = torch.where(none, ((w - cw) / 2).floor(), (u[:, 1] * (w - cw + 1)).floor())
    return torch.stack([top, left, ch, cw], 1)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Each image of ``x`` (N, C, H, W) cropped to its box (top, left, height, width, in pixels) and resized
    bilinearly to ``size`` (default: the input size), in one batched ``grid_sample``; differentiable in ``x``."""
    n, _, h, w = x.shape
    size = size or (h, w)
    b = boxes.to(x.device, x.dtype)
    top, left, bh, bw = b.unbind(1)
    # affine_grid maps output [-1, 1] to input coordinates (align_corners=False: pixel edges at -1 and 1)
    sx, sy = bw / w, bh / h
    tx, ty = (2 * left + bw) / w - 1, (2 * top + bh) / h - 1
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, [n, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class View:
    """The random choices behind one minibatch view of the teacher recipe, so that a view can be stored and replayed
    (FKD's stored crops): RDED's patch shuffle (``cols`` and ``rows``, (N, f): each image's permutations of its f
    strips; one strip: nothing moves), each image's crop box (top, left, height, width) and flip, and CutMix's box
    (top, bottom, left, right; empty when the batch is not mixed) with the batch position pasted into each image."""

    cols: torch.Tensor
    rows: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    mix_box: torch.Tensor
    mix_from: torch.Tensor


def draw_view(
    n: int,
    size: tuple[int, int],
    g: torch.Generator,
    patches: int = 1,
    scale=(0.5, 1.0),
    flip: bool = True,
    cutmix: float = 1.0,
    beta: float = 1.0,
) -> View:
    """The random choices of one view of ``n`` images of ``size``: patch-strip permutations, random resized crop
    boxes (``scale``: area shares), flips (when ``flip``), and with probability ``cutmix`` one CutMix box (Yun et al.
    2019: area share ``1 - lam``, lam ~ Beta(beta, beta)) pasted from a shuffled copy of the batch."""
    h, w = size

    def perms() -> torch.Tensor:  # one permutation of the strips per image (RDED's ShufflePatches is per sample)
        if patches == 1:
            return torch.zeros(n, 1, dtype=torch.int64)
        return torch.stack([torch.randperm(patches, generator=g) for _ in range(n)])

    cols, rows = perms(), perms()
    boxes = random_boxes(n, size, scale, g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    box, source = torch.zeros(4, dtype=torch.int64), torch.arange(n)
    if cutmix and float(torch.rand((), generator=g)) < cutmix and n > 1:
        lam = float(np.random.default_rng(int(torch.randint(2**62, (1,), generator=g))).beta(beta, beta))
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
        box = torch.tensor([max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)])
        source = torch.randperm(n, generator=g)
    return View(cols, rows, boxes, flips, box, source)


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """The view of the batch ``x`` (N, C, H, W): patch shuffle, resized crops, flips, then the CutMix paste (the
    pasted content is the other image's view: the box is cut from the transformed batch, as CutMix after the
    per-image transforms of a data loader)."""
    n, c, h, w = x.shape
    f = view.cols.shape[1]
    if f > 1:  # each image's strips of columns, then of rows, in its own order
        strips = torch.arange(w).tensor_split(f)
        cols = torch.stack([torch.cat([strips[i] for i in perm]) for perm in view.cols.tolist()]).to(x.device)
        x = x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))
        strips = torch.arange(h).tensor_split(f)
        rows = torch.stack([torch.cat([strips[i] for i in perm]) for perm in view.rows.tolist()]).to(x.device)
        x = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    x = resized_crops(x, view.boxes)
    x = torch.where(view.flips.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    y0, y1, x0, x1 = view.mix_box.tolist()
    if y1 > y0 and x1 > x0:
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[view.mix_from.to(x.device)][:, :, y0:y1, x0:x1]
    return x
