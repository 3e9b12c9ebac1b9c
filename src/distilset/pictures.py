"""Pictures of synthetic sets: a labelled grid of images, one row per class; PNG bytes for the HTML report."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw


def png_bytes(picture: Image.Image) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def grid_picture(
    pixels: torch.Tensor,
    labels: torch.Tensor,
    class_names: tuple[str, ...],
    max_per_class: int = 20,
    min_side: int = 32,
) -> Image.Image:
    """A picture of ``pixels`` (N, C, H, W) in [0, 1]: a row per class with its name at the left."""
    n, c, h, w = pixels.shape
    scale = max(1, -(-min_side // max(h, w)))  # upscale tiny images (8x8 digits) so they can be seen
    cell_h, cell_w, pad, label_w = h * scale, w * scale, 2, 90
    rows = [(k, torch.nonzero(labels == k, as_tuple=True)[0][:max_per_class]) for k in range(len(class_names))]
    rows = [(k, idx) for k, idx in rows if len(idx)]
    cols = max((len(idx) for _, idx in rows), default=1)
    canvas = Image.new("RGB", (label_w + cols * (cell_w + pad) + pad, len(rows) * (cell_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (k, idx) in enumerate(rows):
        y0 = pad + r * (cell_h + pad)
        draw.text((4, y0 + cell_h // 2 - 5), str(class_names[k])[:14], fill="black")
        for j, i in enumerate(idx.tolist()):
            img = (pixels[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(img[..., 0] if c == 1 else img[..., :3]).convert("RGB")
            tile = tile.resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + j * (cell_w + pad), y0))
    return canvas
