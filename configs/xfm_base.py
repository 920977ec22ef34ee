r"""X-FM base (arXiv 2301.05065): BEiT-2 ViT-B/16 + RoBERTa-base + 12-layer fusion, ~327M params.

Run (main job on a pod):  python -m xfm_jax.train --config=configs/xfm_base.py --workdir=DIR
Tiny (tests, CPU):         --config=configs/xfm_base.py:tiny
Claims in miniature:       --config=configs/xfm_base.py:claims (run by launch/claims.py)
Main job, stage 1:         --config=configs/xfm_base.py:mini_regions (run by launch/local.sh)
"""

from configs import common


def get_config(arg: str = ''):
    model = common.model_config(
        'xfm', common.vision_config(), common.roberta_config(), fusion_depth=12)
    if arg == 'claims':
        config = common.run_config('xfm', model, 'mini')
        _claims(config)
        return config
    if arg == 'mini_regions':
        config = common.run_config('xfm', model, 'mini')
        _mini_regions(config)
        return config
    return common.run_config('xfm', model, arg)


def _mini_regions(config) -> None:
    """Preset 'mini_regions': stage 1 of the main job (launch/local.sh). The miniature (preset
    'mini') on its region stream alone (box L1 + GIoU and the region ITC) for 1,000 steps; stage
    2, the whole 'mini' recipe, starts from its checkpoint (``train.init_from``).

    Why: the papers start from a pretrained BEiT-2, whose patch tokens are local from the first
    step. The miniature's vision tower starts from scratch, and at its 10x rate the image-level
    ITC (the mean of all patch tokens against a caption naming every object) gives its tokens an
    image-wide part before the fusion layer learns to pick the phrase's object: in the mixed
    recipe the box never leaves its plateau (grounding 1.95 % at step 400, 3.9 % at 1,200),
    while the region stream alone learns it (29.3 % at step 1,000) and keeps it once the other
    streams join (docs/training.md, *The miniature: what it learns*)."""
    common.keep_streams(config, ['region'])
    # The fresh fusion layer and the box head at the reference's rates: at 10x the box collapses.
    config.optimizer.lr_multipliers = common.XFM_MINI_BOX_LR_MULTIPLIERS
    config.train.update(total_steps=1000, log_every=50, eval_every=250)
    config.checkpoint.every_steps = 250
    # Held-out grounding on the synthetic scenes (the default reads the image-text stream's
    # source, which this stage does not train on).
    config.evaluate.during_training = config.evaluate.evaluators = 'grounding'
    config.evaluate.grounding.source = 'xfm_synthetic_scenes'


def _claims(config) -> None:
    """Preset 'claims': the miniature (preset 'mini') cut to the two streams X-FM's claims are
    about, for launch/claims.py's seeds x arms in minutes each. The text stream reads real
    English (WordNet glosses, fortunes: `apt-get install wordnet-base fortunes`), so the
    MiniLM tower keeps meeting the kind of text its language understanding is measured on; the
    image-text stream carries the fusion losses that reach the language tower when
    ``model.stop_gradient_text`` is off, and VL-guided MIM (``streams.image_text.mim``). The
    movie reviews stay out of pre-training: they are the language task downstream."""
    # Grounding and image-only MIM are not measured.
    common.keep_streams(config, ['text', 'image_text'])
    text = config.data.streams.text
    text.mixture = [('wordnet_glosses_text', 1.0), ('fortunes_text', 0.5)]
    config.batch.text.text_len = 24  # glosses and fortunes run longer than captions
    # The image-text stream, its captions-only mixture and the rates stay the miniature's
    # (preset 'mini').
    config.optimizer.warmup_steps = 20
    config.train.update(total_steps=100, log_every=25, eval_every=0)
    config.checkpoint.every_steps = 100
    # What the claims are read on: held-out retrieval (VL) and frozen-feature probes on
    # Fashion-MNIST (vision), run once on the final parameters.
    config.evaluate.evaluators = 'retrieval,linear_probe,mlp_probe'
    config.evaluate.during_training = 'retrieval'  # no region stream: no grounding
    for probe in ('linear_probe', 'mlp_probe'):
        config.evaluate[probe].update(source='fashion_mnist', max_train_images=1000,
                                      max_test_images=1000)
