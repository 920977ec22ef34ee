"""The synthetic scenes' texts: every caption names its whole scene, so that within a batch a
caption is true of its own image only (up to a scene with the same shapes), which ITC and ITM
assume when they count every other image of the batch as a negative."""

import numpy as np

from xfm_jax.data.builders import synthetic


def _named(caption: str) -> list[tuple[str, ...]]:
    """'a large red circle and a small blue square' -> [(large, red, circle), ...]."""
    return [tuple(part.split()[1:]) for part in caption.split(' and ')]


def test_both_captions_name_every_shape_the_second_largest_first():
    for i in range(300):
        out = synthetic.scene(np.random.default_rng((1, i)), 64)
        shapes = {tuple(p.split()[1:]) for p in out['objects']['phrase']}  # 'the size colour shape'
        drawing, by_size = (_named(c) for c in out['captions'])
        assert set(drawing) == set(by_size) == shapes and len(by_size) == len(shapes)
        assert max(len(c.split()) for c in out['captions']) <= 14  # mini: 16 tokens
        assert by_size[0][2] == out['label'], (out['captions'], out['label'])
        sides = {tuple(p.split()[1:]): box[2] for p, box in
                 zip(out['objects']['phrase'], out['objects']['bbox'])}
        assert [sides[s] for s in by_size] == sorted(sides.values(), reverse=True)


def test_a_caption_is_seldom_true_of_another_scene_in_a_batch():
    """Of 16 scenes drawn at random, how often is a caption true of one of the other 15: that
    scene has every shape it names (12 % here, mostly one-shape captions of scenes with more
    shapes; 25 % with version 1.0.0's second caption, which named the first shape only), or
    exactly those shapes (2.2 %)?"""
    scenes = [synthetic.scene(np.random.default_rng((0, i)), 64) for i in range(400)]
    kinds = [frozenset(_named(s['captions'][0])) for s in scenes]
    rng = np.random.default_rng(0)
    true_of, exact = [], []
    for _ in range(200):
        batch = rng.choice(len(scenes), 16, replace=False)
        for a in batch:
            caption = frozenset(_named(scenes[a]['captions'][rng.integers(2)]))
            true_of.append(any(caption <= kinds[b] for b in batch if b != a))
            exact.append(any(caption == kinds[b] for b in batch if b != a))
    assert np.mean(true_of) < 0.15 and np.mean(exact) < 0.04, (np.mean(true_of), np.mean(exact))
