"""preview.png: a contact sheet of the first images with their labels."""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_TILES = 16
COLUMNS = 4
MIN_TILE_WIDTH = 160
CAPTION_HEIGHT = 14


def contact_sheet(images: list[np.ndarray], captions: list[str]) -> Image.Image:
    """Tiles (upscaled with nearest neighbour to at least MIN_TILE_WIDTH wide) with a caption each."""
    h, w = images[0].shape[:2]
    scale = max(1, math.ceil(MIN_TILE_WIDTH / w))
    tw, th = w * scale, h * scale
    cols = min(COLUMNS, len(images))
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * tw, rows * (th + CAPTION_HEIGHT)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (img, caption) in enumerate(zip(images, captions)):
        x, y = (i % cols) * tw, (i // cols) * (th + CAPTION_HEIGHT)
        tile = Image.fromarray(img)
        if scale > 1:
            tile = tile.resize((tw, th), Image.NEAREST)
        sheet.paste(tile, (x, y))
        draw.text((x + 3, y + th + 1), caption, fill=(0, 0, 0), font=font)
    return sheet


def caption(index: int, has_x: int, has_y: int, n_objects: int) -> str:
    return f"#{index} X={has_x} Y={has_y} n={n_objects}"
