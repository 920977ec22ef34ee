"""Video-text retrieval on 12 synthetic clips with a random-init tiny X²-VLM, sharded over 8
simulated devices in batches of 8, against an independent computation: each frame through the
image encoder, the learned frame embedding added, the mean over frames, then ITC and ITM of
every (clip, caption) pair in one unsharded apply, recall from argsort positions."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from xfm_jax import evaluators, partitioning
from xfm_jax.data import image_ops
from xfm_jax.evaluators import batching, data, video_retrieval
from xfm_jax.models.model import build_model


@pytest.fixture(scope='module')
def ctx(video_eval_config, random_arrays):
    mesh = partitioning.make_mesh(video_eval_config.partitioning.mesh)
    rules = partitioning.get_rules(video_eval_config.partitioning.rules)
    model = build_model(video_eval_config.model)
    # Init-like LayerNorms: with scales near 0 ITM barely depends on the text, and float32 ties
    # would decide the rankings compared here.
    params = random_arrays(*partitioning.param_shardings(model, mesh, rules), std=0.1,
                           init_like=True)
    return batching.EvalContext(model=model, params=params, mesh=mesh, rules=rules,
                                config=video_eval_config, batch_size=8)


def _recall(scores, truth, k):
    """Percent of queries (rows of scores [Q, C]) whose true candidate is in the top k."""
    position = np.argmax(np.argsort(-scores, axis=1) == np.asarray(truth)[:, None], axis=1)
    return 100.0 * np.mean(position < k)


def test_video_retrieval_matches_independent_computation(ctx):
    ds = data.load_video(ctx.config, '', 'validation', 12)
    assert ds.frames.shape == (12, 2, 32, 32, 3)  # model.video_frames at the model's size
    np.testing.assert_array_equal(ds.caption_video, np.arange(12))  # one caption per clip
    settings = ctx.config.evaluate.video_retrieval.copy_and_resolve_references()
    settings.k = 12  # every candidate re-ranked: ITM alone orders each query's list
    out = video_retrieval.evaluate(ctx, settings)

    params = jax.device_get(ctx.params)
    mask = (ds.caption_ids != ctx.config.model.text.pad_id).astype(np.int32)
    video, text = np.meshgrid(np.arange(12), np.arange(12), indexing='ij')

    def direct(m, frames, ids, mask):
        per_frame = m.encode_image(frames.reshape(-1, *frames.shape[2:]))
        per_frame = per_frame.reshape(*frames.shape[:2], *per_frame.shape[1:])
        tokens = (per_frame + params['frame_embed']).mean(axis=1)
        hidden = m.encode_text(ids, mask)
        fused = m.fuse(hidden[text.ravel()], mask[text.ravel()], tokens[video.ravel()])
        match = jax.nn.softmax(m.itm_logits(fused), -1)[:, 1]
        return m.image_embedding(tokens), m.text_embedding(hidden), match
    video_emb, text_emb, match = jax.jit(lambda p, *a: ctx.model.apply(
        {'params': p}, *a, method=direct))(params, np.asarray(ds.frames), ds.caption_ids, mask)
    similarity = np.asarray(video_emb) @ np.asarray(text_emb).T  # [V, T]
    itm = np.asarray(match).reshape(12, 12)
    for k in (1, 5, 10):
        for prefix, scores in (('itc', similarity), ('itm', itm)):
            assert out[f'{prefix}/t2v_r{k}'] == pytest.approx(
                _recall(scores.T, ds.caption_video, k)), (prefix, k)
            assert out[f'{prefix}/v2t_r{k}'] == pytest.approx(
                _recall(scores, np.arange(12), k)), (prefix, k)
        assert out[f'chance/t2v_r{k}'] == pytest.approx(100 * k / 12)
    assert out['num_videos'] == 12 and out['num_texts'] == 12


def test_user_frame_folders_give_the_middle_frame_of_each_segment(video_eval_config, tmp_path):
    # Two clips of 5 flat grey frames (value 40 t + 20 c); 2 frames of 5: segments [0, 2.5) and
    # [2.5, 5), middles 1.25 and 3.75 -> frames 1 and 3.
    lines = []
    for c, caption in enumerate(('a red circle moving left', 'a blue square moving up')):
        os.makedirs(tmp_path / f'clip{c}')
        for t in range(5):
            Image.new('RGB', (16, 16), (40 * t + 20 * c,) * 3).save(
                tmp_path / f'clip{c}' / f'{t:03d}.png')
        lines.append(json.dumps({'frames': f'clip{c}', 'caption': caption}))
    (tmp_path / 'clips.jsonl').write_text('\n'.join(lines))
    config = video_eval_config.copy_and_resolve_references()
    config.data.user_sources = {'my_clips': {'format': 'video_frames',
                                             'path': str(tmp_path / 'clips.jsonl'),
                                             'validation_path': str(tmp_path / 'clips.jsonl')}}
    ds = data.load_video(config, 'my_clips', 'validation')
    # TFDS stores examples in its own (key-hashed) order: find each clip by its caption.
    assert sorted(ds.captions) == ['a blue square moving up', 'a red circle moving left']
    np.testing.assert_array_equal(ds.caption_video, [0, 1])
    clip = [1 if caption.startswith('a blue') else 0 for caption in ds.captions]
    pixels = (ds.frames * np.asarray(image_ops.CLIP_STD) + np.asarray(image_ops.CLIP_MEAN)) * 255
    expected = np.array([[40 * t + 20 * c for t in (1, 3)] for c in clip], np.float32)
    np.testing.assert_allclose(pixels, np.broadcast_to(expected[..., None, None, None],
                                                       pixels.shape), atol=2.0)


def test_video_evaluators_run_by_default_only_with_a_video_path(video_eval_config, eval_config):
    assert 'video_retrieval' in video_eval_config.evaluate.evaluators.split(',')
    assert 'video_retrieval' not in eval_config.evaluate.evaluators.split(',')
    assert set(eval_config.evaluate.evaluators.split(',')) == (
        set(evaluators.NAMES) - set(evaluators.VIDEO))
    with pytest.raises(ValueError, match='needs a model with a video path'):
        data.load_video(eval_config, '', 'validation')
