"""``xfm_synthetic``: procedurally drawn scenes, clips and sentences; builds offline in seconds.

Scenes are 1-3 coloured shapes on a grey background; every text truly describes its image:
two captions naming every shape, in drawing order ("a small blue square and a large red
circle") and largest first ("a large red circle and a small blue square"), region phrases with
boxes ("the small blue square"), question-answer pairs ("what color is the circle? red") and a
class label (the largest shape). Clips are a shape moving in one direction ("a red circle
moving left"). Sentences are text-only statements from the same grammar. Example i of a split
is drawn from ``np.random.default_rng((split_salt, i))``: the dataset is identical on every
machine.

Configs: ``scenes_64`` / ``scenes_224`` (stored at 64 / 256 px), ``clips_64``, ``sentences``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from xfm_jax.data.builders import schema

COLORS = {'red': (220, 40, 40), 'green': (40, 180, 60), 'blue': (40, 80, 220),
          'yellow': (235, 220, 50), 'purple': (140, 60, 190), 'orange': (245, 140, 30),
          'white': (245, 245, 245), 'black': (15, 15, 15)}
SHAPES = ('circle', 'square', 'triangle', 'diamond')
SIZES = ('small', 'large')
NUMBERS = ('zero', 'one', 'two', 'three', 'four')
DIRECTIONS = {'left': (-1, 0), 'right': (1, 0), 'up': (0, -1), 'down': (0, 1)}
_TEMPLATE_WORDS = ('a an the and is are there on of to in picture image shows what color shape '
                   'how many shapes left right top bottom side moving above below next largest '
                   'one object objects with').split()
WORDS = tuple(sorted(set(_TEMPLATE_WORDS) | set(COLORS) | set(SHAPES) | set(SIZES)
                     | set(NUMBERS) | set(DIRECTIONS)))
_SPLITS = {'train': (0, 1.0), 'validation': (1, 0.1)}  # split -> (rng salt, fraction of size)


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    kind: str = 'scenes'  # 'scenes' | 'clips' | 'sentences'
    image_size: int = 64
    num_examples: int = 2000
    num_frames: int = 8


@dataclasses.dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    box: tuple[float, float, float, float]  # x, y, w, h pixels

    def phrase(self) -> str:
        return f'the {self.size} {self.color} {self.shape}'


def draw(canvas: Image.Image, item: Shape) -> None:
    x, y, w, h = item.box
    fill = COLORS[item.color]
    pen = ImageDraw.Draw(canvas)
    if item.shape == 'circle':
        pen.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
    elif item.shape == 'square':
        pen.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
    elif item.shape == 'triangle':
        pen.polygon([(x + w / 2, y), (x + w - 1, y + h - 1), (x, y + h - 1)], fill=fill)
    else:
        pen.polygon([(x + w / 2, y), (x + w - 1, y + h / 2), (x + w / 2, y + h - 1),
                     (x, y + h / 2)], fill=fill)


def sample_shapes(rng: np.random.Generator, size: int, count: int) -> list[Shape]:
    """Up to ``count`` non-overlapping shapes with distinct (shape, color) pairs."""
    items: list[Shape] = []
    for _ in range(count * 20):
        if len(items) == count:
            break
        kind, color, scale = rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES)
        if any(i.shape == kind and i.color == color for i in items):
            continue
        side = round(size * (rng.uniform(0.14, 0.22) if scale == 'small' else
                             rng.uniform(0.34, 0.46)))
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if any(x < a + c and a < x + side and y < b + d and b < y + side
               for a, b, c, d in (i.box for i in items)):
            continue
        items.append(Shape(str(kind), str(color), str(scale), (x, y, side, side)))
    return items


def describe(items: list[Shape]) -> str:
    return ' and '.join(f'a {i.size} {i.color} {i.shape}' for i in items)


def questions(items: list[Shape]) -> list[tuple[str, str]]:
    qa = [('how many shapes are there', NUMBERS[len(items)])]
    for item in items:
        if sum(i.shape == item.shape for i in items) == 1:
            qa.append((f'what color is the {item.shape}', item.color))
    leftmost = min(items, key=lambda i: i.box[0])
    qa.append(('what shape is on the left', leftmost.shape))
    return qa


def scene(rng: np.random.Generator, size: int) -> dict:
    background = tuple(int(v) for v in rng.integers(90, 160, 3))
    canvas = Image.new('RGB', (size, size), background)
    items = sample_shapes(rng, size, int(rng.integers(1, 4)))
    for item in items:
        draw(canvas, item)
    by_size = sorted(items, key=lambda i: -i.box[2])  # stable: ties keep drawing order
    return {
        'image': schema.jpeg_bytes(canvas),
        # Both captions name every shape, so a caption is true of its own scene and (up to a
        # scene with the same shapes) of no other: in version 1.0.0 the second, 'a picture of'
        # and the first shape, was true of another scene of a batch of 16 in 25 % of cases,
        # and ITC / ITM counted those scenes as negatives (docs/training.md). At most 14
        # words: 16 WordPiece tokens with [CLS] and [SEP], the miniature's text length.
        'captions': [describe(items), describe(by_size)],
        'objects': {'bbox': np.array([i.box for i in items], np.float32).reshape(-1, 4),
                    'phrase': [i.phrase() for i in items]},
        'qa': {'question': [q for q, _ in questions(items)],
               'answer': [a for _, a in questions(items)]},
        'label': by_size[0].shape,
    }


def clip(rng: np.random.Generator, size: int, num_frames: int) -> dict:
    background = tuple(int(v) for v in rng.integers(90, 160, 3))
    item = sample_shapes(rng, size, 1)[0]
    direction = str(rng.choice(list(DIRECTIONS)))
    dx, dy = DIRECTIONS[direction]
    x, y, w, h = item.box
    step = (size - w) / max(num_frames - 1, 1) * 0.8
    # Start near the border opposite to the motion so the shape stays inside.
    if dx:
        x = (size - w) * (0.9 if dx < 0 else 0.1)
    if dy:
        y = (size - h) * (0.9 if dy < 0 else 0.1)
    frames = []
    for t in range(num_frames):
        canvas = Image.new('RGB', (size, size), background)
        moved = dataclasses.replace(item, box=(x + dx * step * t, y + dy * step * t, w, h))
        draw(canvas, moved)
        frames.append(schema.jpeg_bytes(canvas))
    return {'frames': frames,
            'captions': [f'a {item.size} {item.color} {item.shape} moving {direction}']}


def sentence(rng: np.random.Generator) -> str:
    a, b = (sample_shapes(rng, 100, 1)[0] for _ in range(2))
    relation = 'left of' if a.box[0] < b.box[0] else 'right of'
    templates = [
        f'the {a.color} {a.shape} is {relation} the {b.color} {b.shape}',
        f'there is a {a.size} {a.color} {a.shape} next to a {b.size} {b.color} {b.shape}',
        f'a {a.color} {a.shape} and a {b.color} {b.shape} are in the picture',
        f'the {a.shape} is {a.color} and the {b.shape} is {b.color}',
    ]
    return str(rng.choice(templates))


class XfmSynthetic(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes: scenes (image-text, regions, VQA, labels), clips, sentences."""

    VERSION = tfds.core.Version('1.1.0')
    RELEASE_NOTES = {
        '1.1.0': "Scenes' second caption names every shape, largest first (was: 'a picture "
                 "of' and the first shape). Images, boxes, phrases, questions and labels are "
                 'unchanged.',
        '1.0.0': 'Initial release.',
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(name='scenes_64', kind='scenes', image_size=64, num_examples=2000),
        SyntheticConfig(name='scenes_224', kind='scenes', image_size=256, num_examples=1000),
        SyntheticConfig(name='clips_64', kind='clips', image_size=64, num_examples=300),
        SyntheticConfig(name='sentences', kind='sentences', num_examples=5000),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        kind = self.builder_config.kind
        if kind == 'scenes':
            features = schema.image_text_features(
                qa=tfds.features.Sequence({'question': tfds.features.Text(),
                                           'answer': tfds.features.Text()}),
                label=tfds.features.ClassLabel(names=SHAPES))
        elif kind == 'clips':
            features = schema.video_features()
        else:
            features = schema.text_features()
        return self.dataset_info_from_configs(features=features)

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is drawn locally
        return {name: self._generate_examples(salt, max(1, int(self.builder_config.num_examples
                                                               * fraction)))
                for name, (salt, fraction) in _SPLITS.items()}

    def _generate_examples(self, salt: int, count: int):
        config = self.builder_config
        for i in range(count):
            rng = np.random.default_rng((salt, i))
            key = f'{config.name}-{salt}-{i}'
            if config.kind == 'scenes':
                yield key, {'image_key': key, **scene(rng, config.image_size)}
            elif config.kind == 'clips':
                yield key, {'video_key': key, **clip(rng, config.image_size, config.num_frames)}
            else:
                yield key, {'text': sentence(rng)}
