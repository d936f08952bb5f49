"""PNG figures of the evaluate / search commands, drawn with Pillow (matplotlib is not a dependency):
PSNR per frame coloured by split, and a labelled contact sheet of patches."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from hnerv_fast.errors import writing

SPLIT_COLOURS = {"train": (31, 119, 180), "val": (255, 127, 14), "-": (127, 127, 127)}
_AXIS = (60, 60, 60)
_GRID = (225, 225, 225)
_LABEL_H, _PAD = 28, 6  # contact sheet: label band under each tile, gap between tiles


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1 / 2 / 5 x 10^k step that cuts `span` into about `ticks` intervals."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def psnr_per_frame_plot(frames: list[int], psnr: list[float], splits: list[str], path: str | Path,
                        title: str = "PSNR per frame") -> Path:
    """Scatter of PSNR (dB) against frame index, one colour per split (SPLIT_COLOURS), with a legend that gives
    each split's frame count and mean."""
    width, height = 900, 420
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    low, high = min(psnr), max(psnr)
    step = _nice_step(high - low)
    y0, y1 = math.floor(low / step) * step, math.ceil(high / step) * step
    if y1 <= y0:
        y0, y1 = y0 - step, y1 + step
    x0, x1 = min(frames), max(max(frames), min(frames) + 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(frame: float, value: float) -> tuple[float, float]:
        return (left + (frame - x0) / (x1 - x0) * plot_w, top + (y1 - value) / (y1 - y0) * plot_h)

    tick = y0
    while tick <= y1 + step / 2:
        _, py = to_px(x0, tick)
        draw.line([(left, py), (width - right, py)], fill=_GRID)
        draw.text((left - 8, py), f"{tick:g}", fill=_AXIS, font=font, anchor="rm")
        tick += step
    x_step = max(1, int(_nice_step(x1 - x0, 10)))
    for frame in range(math.ceil(x0 / x_step) * x_step, x1 + 1, x_step):
        px, _ = to_px(frame, y0)
        draw.line([(px, top + plot_h), (px, top + plot_h + 4)], fill=_AXIS)
        draw.text((px, top + plot_h + 6), str(frame), fill=_AXIS, font=font, anchor="mt")
    draw.rectangle([left, top, width - right, top + plot_h], outline=_AXIS)
    draw.text((width // 2, 12), title, fill=_AXIS, font=font, anchor="mt")
    draw.text((width // 2, height - 14), "frame", fill=_AXIS, font=font, anchor="mm")
    draw.text((left, top - 6), "PSNR (dB)", fill=_AXIS, font=font, anchor="rb")

    order = sorted(range(len(frames)), key=frames.__getitem__)
    draw.line([to_px(frames[i], psnr[i]) for i in order], fill=_GRID, width=1)
    legend = []
    for split, colour in SPLIT_COLOURS.items():
        values = [(f, v) for f, v, s in zip(frames, psnr, splits) if s == split]
        if not values:
            continue
        for frame, value in values:
            px, py = to_px(frame, value)
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        mean = sum(v for _, v in values) / len(values)
        legend.append((f"{split}: {len(values)} frames, mean {mean:.2f} dB", colour))
    for k, (text, colour) in enumerate(legend):
        ly = top + 10 + 16 * k
        draw.rectangle([width - right - 230, ly - 4, width - right - 222, ly + 4], fill=colour)
        draw.text((width - right - 216, ly), text, fill=_AXIS, font=font, anchor="lm")
    return _save(image, path)


def contact_sheet(tiles: torch.Tensor, labels: list[str], path: str | Path, columns: int = 5) -> Path:
    """uint8 ``[K, 3, h, w]`` tiles in rows of ``columns``, each above its label. Small tiles are enlarged by a whole
    factor (nearest neighbour, so every source pixel is a ``scale x scale`` block) to about 128 px; large ones are
    shrunk to fit 256 px."""
    count, _, h, w = tiles.shape
    scale = max(1, 128 // max(h, w))
    shrink = min(1.0, 256 / max(h, w))
    tile_w, tile_h = round(w * scale * shrink), round(h * scale * shrink)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    sheet = Image.new("RGB", (columns * (tile_w + _PAD) + _PAD, rows * (tile_h + _LABEL_H + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k in range(count):
        tile = Image.fromarray(tiles[k].permute(1, 2, 0).cpu().numpy())
        tile = tile.resize((tile_w, tile_h), Image.NEAREST if shrink == 1.0 else Image.LANCZOS)
        x, y = tile_origin(k, (tile_h, tile_w), columns)
        sheet.paste(tile, (x, y))
        for line, text in enumerate(labels[k].split("\n")[:2]):
            draw.text((x, y + tile_h + 2 + 12 * line), text, fill=_AXIS, font=font)
    return _save(sheet, path)


def tile_origin(k: int, tile_hw: tuple[int, int], columns: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of tile ``k`` on a contact sheet whose tiles are ``tile_hw`` pixels."""
    row, col = divmod(k, columns)
    return _PAD + col * (tile_hw[1] + _PAD), _PAD + row * (tile_hw[0] + _LABEL_H + _PAD)


def _save(image: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return path
