r"""X-FM base (arXiv 2301.05065): BEiT-2 ViT-B/16 + RoBERTa-base + 12-layer fusion, ~327M params.

Run (main job on a pod):  python -m xfm_jax.train --config=configs/xfm_base.py --workdir=DIR
Tiny (tests, CPU):         --config=configs/xfm_base.py:tiny
Claims in miniature:       --config=configs/xfm_base.py:claims (run by launch/claims.py)
"""

from configs import common


def get_config(arg: str = ''):
    model = common.model_config(
        'xfm', common.vision_config(), common.roberta_config(), fusion_depth=12)
    if arg == 'claims':
        config = common.run_config('xfm', model, 'mini')
        _claims(config)
        return config
    return common.run_config('xfm', model, arg)


def _claims(config) -> None:
    """Preset 'claims': the miniature (preset 'mini') cut to the two streams X-FM's claims are
    about, for launch/claims.py's seeds x arms in minutes each. The text stream reads real
    English (WordNet glosses, fortunes: `apt-get install wordnet-base fortunes`), so the
    MiniLM tower keeps meeting the kind of text its language understanding is measured on; the
    image-text stream carries the fusion losses that reach the language tower when
    ``model.stop_gradient_text`` is off, and VL-guided MIM (``streams.image_text.mim``). The
    movie reviews stay out of pre-training: they are the language task downstream."""
    for stream in ('image', 'region'):  # grounding and image-only MIM are not measured
        for section in (config.streams, config.batch, config.data.streams):
            del section[stream]
    text = config.data.streams.text
    text.mixture = [('wordnet_glosses_text', 1.0), ('fortunes_text', 0.5)]
    config.batch.text.text_len = 24  # glosses and fortunes run longer than captions
    config.data.streams.image_text.mixture = [
        ('xfm_synthetic_scenes_image_text', 1.0), ('xfm_synthetic_scenes_vqa_image_text', 0.5)]
    config.optimizer.warmup_steps = 20
    # The rates the README's claims table was measured with (2026-12-01), from before the mini
    # recipe put X-FM's fusion layer at the reference's rates; re-run the table to change them.
    config.optimizer.lr_multipliers = common.MINI_LR_MULTIPLIERS
    config.train.update(total_steps=100, log_every=25, eval_every=0)
    config.checkpoint.every_steps = 100
    # What the claims are read on: held-out retrieval (VL) and frozen-feature probes on
    # Fashion-MNIST (vision), run once on the final parameters.
    config.evaluate.evaluators = 'retrieval,linear_probe,mlp_probe'
    for probe in ('linear_probe', 'mlp_probe'):
        config.evaluate[probe].update(source='fashion_mnist', max_train_images=1000,
                                      max_test_images=1000)
