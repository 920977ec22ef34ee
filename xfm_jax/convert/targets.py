"""The module a checkpoint converts into, and its config, read from the checkpoint itself.

  xfm / x2vlm           -> the whole VisionLanguageModel; config = the ``model`` section of
                           configs/common.py (family preset, then every size read from shapes).
  hf_bert / hf_roberta  -> TextEncoder (with its MLM head when the checkpoint has one).
  hf_beit               -> VisionTransformer.

Shapes give every size except the number of attention heads of text stacks (the vision heads
are the columns of the relative position tables): those come from an HF config.json, from the
config our exporter embeds (``xfm_jax_model``), or from the standard widths (768 -> 12,
1024 -> 16, otherwise 64-wide heads).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xfm_jax.convert import relpos
from xfm_jax.models import model as vlm
from xfm_jax.models.text import TextConfig, TextEncoder
from xfm_jax.models.vision import VisionConfig, VisionTransformer

_HEADS_BY_WIDTH = {768: 12, 1024: 16}
EXPORTED_CONFIG_KEY = 'xfm_jax_model'  # our model config inside an exported checkpoint's config


def _layer_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)


def _text_heads(width: int) -> int:
    return _HEADS_BY_WIDTH.get(width, max(1, width // 64))


def _first(keys, *candidates: str) -> str:
    for candidate in candidates:
        if candidate in keys:
            return candidate
    raise ValueError(f'None of the keys {candidates} is in the checkpoint.')


def _vision_sizes(sd, blocks: str, names: dict[str, str], image_size: int | None):
    """Vision fields from shapes; ``names`` gives the keys of table, fc1, patch kernel, mask."""
    table = sd[names['table']]
    patch = sd[names['patch']].shape[-1]
    grid = (relpos.table_side(table.shape[0]) + 1) // 2
    return dict(width=sd[names['patch']].shape[0], depth=_layer_count(sd, blocks),
                num_heads=table.shape[1], mlp_dim=sd[names['fc1']].shape[0], patch_size=patch,
                image_size=image_size or grid * patch, use_mask_token=names['mask'] in sd)


def _vlm_config(fmt: str, sd, reference_config: dict | None, image_size: int | None):
    embedded = (reference_config or {}).get(EXPORTED_CONFIG_KEY)
    if embedded is not None:
        config = ml_collections.ConfigDict(embedded)
        if image_size:
            config.vision.image_size = image_size
        return config
    from configs import x2vlm_base, x2vlm_large, xfm_base
    vision = _vision_sizes(sd, 'vision_encoder.blocks.', dict(
        table='vision_encoder.blocks.0.attn.relative_position_bias_table',
        fc1='vision_encoder.blocks.0.mlp.fc1.weight',
        patch='vision_encoder.patch_embed.proj.weight',
        mask='vision_encoder.mask_token'), image_size)
    infix = {'xfm': 'roberta.', 'x2vlm': 'bert.'}[fmt]
    text = (f'text_encoder.{infix}' if any(k.startswith(f'text_encoder.{infix}') for k in sd)
            else 'text_encoder.')
    word = sd[f'{text}embeddings.word_embeddings.weight']
    width = word.shape[1]
    preset = xfm_base if fmt == 'xfm' else (x2vlm_large if width == 1024 else x2vlm_base)
    config = preset.get_config().model
    config.vision.update(vision)
    total = _layer_count(sd, f'{text}encoder.layer.')
    if fmt == 'xfm':
        fusion = next(p for p in ('fusion_encoder.roberta.', 'fusion_encoder.')
                      if any(k.startswith(p + 'encoder.layer.') for k in sd))
        num_text, num_fusion = total, _layer_count(sd, f'{fusion}encoder.layer.')
    else:  # one stack: the layers with cross-attention are the fusion layers
        cross = f'{text}encoder.layer.{{}}.crossattention.self.query.weight'
        num_text = min((i for i in range(total) if cross.format(i) in sd), default=total)
        num_fusion = total - num_text
    config.text.update(
        vocab_size=word.shape[0], width=width, depth=num_text, num_heads=_text_heads(width),
        mlp_dim=sd[f'{text}encoder.layer.0.intermediate.dense.weight'].shape[0],
        max_positions=sd[f'{text}embeddings.position_embeddings.weight'].shape[0],
        type_vocab_size=sd[f'{text}embeddings.token_type_embeddings.weight'].shape[0])
    config.fusion.depth = num_fusion
    config.embed_dim = sd['vision_proj.weight'].shape[0]
    frames = sd.get('absolute_frame_pos_embed')
    config.video_frames = 0 if frames is None else frames.shape[1]
    return config


def _hf_text_config(fmt: str, sd, hf_config: dict | None) -> dict:
    from configs import common
    variant = fmt.removeprefix('hf_')
    defaults = common.bert_config() if variant == 'bert' else common.roberta_config()
    infix = f'{variant}.' if any(k.startswith(f'{variant}.') for k in sd) else ''
    word = sd[f'{infix}embeddings.word_embeddings.weight']
    hf = hf_config or {}
    return dict(
        variant=variant, vocab_size=word.shape[0], width=word.shape[1],
        depth=_layer_count(sd, f'{infix}encoder.layer.'),
        num_heads=hf.get('num_attention_heads', _text_heads(word.shape[1])),
        mlp_dim=sd[f'{infix}encoder.layer.0.intermediate.dense.weight'].shape[0],
        max_positions=sd[f'{infix}embeddings.position_embeddings.weight'].shape[0],
        type_vocab_size=sd[f'{infix}embeddings.token_type_embeddings.weight'].shape[0],
        pad_id=hf.get('pad_token_id', defaults.pad_id),
        ln_eps=hf.get('layer_norm_eps', defaults.ln_eps),
        mlm_head=any(k.startswith(('cls.predictions.', 'lm_head.')) for k in sd))


def _hf_vision_config(sd, hf_config: dict | None, image_size: int | None) -> dict:
    """``sd`` in hub (transformers 4) names."""
    infix = 'beit.' if any(k.startswith('beit.') for k in sd) else ''
    table = _first(sd, f'{infix}encoder.layer.0.attention.attention.relative_position_bias.'
                       'relative_position_bias_table',
                   f'{infix}encoder.relative_position_bias.relative_position_bias_table')
    config = _vision_sizes(sd, f'{infix}encoder.layer.', dict(
        table=table, fc1=f'{infix}encoder.layer.0.intermediate.dense.weight',
        patch=f'{infix}embeddings.patch_embeddings.projection.weight',
        mask=f'{infix}embeddings.mask_token'), image_size)
    config['ln_eps'] = (hf_config or {}).get('layer_norm_eps', 1e-6)
    return config


def infer_model_config(fmt: str, state_dict: dict[str, np.ndarray], *,
                       reference_config: dict | None = None, hf_config: dict | None = None,
                       image_size: int | None = None) -> dict:
    """The config of the module ``fmt`` converts into, as a JSON-able dict.

    ``state_dict`` in the names :func:`weights.import_params` maps (hub names for hf_beit).
    ``image_size`` sets the target resolution (tables are resized on import).
    """
    if fmt in ('xfm', 'x2vlm'):
        return _vlm_config(fmt, state_dict, reference_config, image_size).to_dict()
    if fmt in ('hf_bert', 'hf_roberta'):
        return _hf_text_config(fmt, state_dict, hf_config)
    if fmt == 'hf_beit':
        return _hf_vision_config(state_dict, hf_config, image_size)
    raise ValueError(f'Unknown format {fmt!r}.')


def build_target(fmt: str, model_config: dict, *, abstract: bool = True) -> Any:
    """Params of the module ``fmt`` converts into: shapes only (``abstract``) or a fresh init."""
    rng = jax.random.key(0)
    if fmt in ('xfm', 'x2vlm'):
        model = vlm.build_model(ml_collections.ConfigDict(model_config))
        init = lambda r: vlm.init_variables(model, r)  # noqa: E731
    elif fmt in ('hf_bert', 'hf_roberta'):
        fields = {f.name for f in dataclasses.fields(TextConfig)}
        text = TextConfig(**{k: v for k, v in model_config.items() if k in fields})
        ids = jnp.ones((1, 4), jnp.int32)
        method = (lambda m, i, mask: m.mlm_logits(m(i, mask))) if model_config['mlm_head'] else None
        init = lambda r: TextEncoder(text).init(r, ids, ids, method=method)  # noqa: E731
    elif fmt == 'hf_beit':
        fields = {f.name for f in dataclasses.fields(VisionConfig)}
        vision = VisionConfig(**{k: v for k, v in model_config.items() if k in fields})
        images = jnp.zeros((1, vision.image_size, vision.image_size, 3))
        init = lambda r: VisionTransformer(vision).init(r, images)  # noqa: E731
    else:
        raise ValueError(f'Unknown format {fmt!r}.')
    variables = jax.eval_shape(init, rng) if abstract else init(rng)
    return variables['params']
