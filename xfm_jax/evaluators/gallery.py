"""PNG galleries of evaluated examples: a grid whose rows are lists of cells, each an image
thumbnail (framed in a colour) or a block of wrapped text (in a colour). Columns are as wide as
their widest cell, so rows line up.

    gallery.draw(path, [[gallery.Thumb(pixels[0]), gallery.Text('a red circle'),
                         gallery.Thumb(pixels[3], frame='green')], ...])
"""

from __future__ import annotations

import dataclasses
import textwrap

import numpy as np

from xfm_jax import paths
from xfm_jax.data import image_ops

CHAR_WIDTH, LINE_HEIGHT = 6, 11  # PIL's default bitmap font


@dataclasses.dataclass(frozen=True)
class Thumb:
    """An image, uint8 [H, W, 3] (see :func:`to_uint8`), drawn as a square thumbnail inside a
    frame of colour ``frame`` (None: no frame)."""
    pixels: np.ndarray
    frame: str | None = None


@dataclasses.dataclass(frozen=True)
class Text:
    """Text wrapped at ``width`` characters (newlines kept), as many lines as fit the row."""
    text: str
    colour: str = 'black'
    width: int = 40


def to_uint8(images: np.ndarray) -> np.ndarray:
    """CLIP-normalised float images [..., 3] -> uint8 pixels."""
    pixels = images * np.asarray(image_ops.CLIP_STD) + np.asarray(image_ops.CLIP_MEAN)
    return np.clip(pixels * 255, 0, 255).astype(np.uint8)


def _width(cell, size: int) -> int:
    return size if isinstance(cell, Thumb) else cell.width * CHAR_WIDTH


def draw(path: str, rows: list[list[Thumb | Text]], size: int = 96,
         pad: int = 4) -> np.ndarray:
    """Writes the grid of ``rows`` to ``path`` (PNG); every row is ``size`` pixels high.
    Returns the grid's pixels, uint8 [H, W, 3] (for TensorBoard)."""
    from PIL import Image, ImageDraw
    columns = max(map(len, rows), default=0)
    widths = [max((_width(row[c], size) for row in rows if c < len(row)), default=0)
              for c in range(columns)]
    lefts = np.concatenate([[0], np.cumsum(np.asarray(widths) + pad)]).astype(int)
    canvas = Image.new('RGB', (max(int(lefts[-1]), 1), max(len(rows) * (size + pad), 1)),
                       'white')
    pen = ImageDraw.Draw(canvas)
    max_lines = max(1, (size - pad) // LINE_HEIGHT)
    for r, row in enumerate(rows):
        y = r * (size + pad)
        for c, cell in enumerate(row):
            x = int(lefts[c])
            if isinstance(cell, Thumb):
                border = 3 if cell.frame else 0
                thumb = Image.fromarray(cell.pixels).resize(
                    (size - 2 * border, size - 2 * border), Image.NEAREST)
                if cell.frame:
                    pen.rectangle([x, y, x + size - 1, y + size - 1], fill=cell.frame)
                canvas.paste(thumb, (x + border, y + border))
            else:
                lines = [line for paragraph in cell.text.split('\n')
                         for line in textwrap.wrap(paragraph, cell.width) or ['']][:max_lines]
                pen.multiline_text((x + pad, y + pad), '\n'.join(lines), fill=cell.colour)
    target = paths.resolve(path)  # local or gs://
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open('wb') as f:
        canvas.save(f, format='PNG')
    return np.asarray(canvas)
