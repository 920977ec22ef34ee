"""The module a checkpoint converts into, and its config, read from the checkpoint itself.

  xfm / x2vlm           -> the whole VisionLanguageModel; config = the ``model`` section of
                           configs/common.py (family preset, then every size read from shapes).
  hf_bert / hf_roberta  -> TextEncoder (with its MLM head when the checkpoint has one).
  hf_beit / beit2       -> VisionTransformer.

Shapes give every size except the number of attention heads of text stacks (the vision heads
are the columns of the relative position tables). The heads, and every size a config states,
come from the configs that travel with the checkpoint: the config our exporter embeds
(``xfm_jax_model``), the text model config the reference was built from (HF ``config.json``
fields), and the reference config's own sizes (``text_num_hidden_layers``, ``image_res`` ...).
A stated size that disagrees with the shapes is an error; where nothing states the text heads,
``text_num_heads`` must be given: they are never guessed.
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

EXPORTED_CONFIG_KEY = 'xfm_jax_model'  # our model config inside an exported checkpoint's config
# Where a reference config may hold the HF config of its text model (the reference builds it as
# ``config_text`` from ``<text_encoder>/config.json``).
TEXT_CONFIG_KEYS = ('text_config', 'config_text')


def _layer_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r'(\d+)\.')
    return 1 + max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=-1)


def stated_text_config(reference_config: dict | None, hf_config: dict | None) -> dict | None:
    """The HF config of the text model, where the checkpoint's configs hold one: embedded in
    the reference config, or a ``config.json`` beside the file that describes a text model."""
    for key in TEXT_CONFIG_KEYS:
        value = (reference_config or {}).get(key)
        if isinstance(value, dict):
            return value
    if hf_config and 'num_attention_heads' in hf_config and 'vision_config' not in hf_config:
        return hf_config
    return None


def _text_heads(width: int, text_config: dict | None, text_num_heads: int | None,
                where: str) -> int:
    stated = (text_config or {}).get('num_attention_heads')
    if stated is not None and text_num_heads is not None and stated != text_num_heads:
        raise ValueError(f'text_num_heads={text_num_heads} contradicts num_attention_heads='
                         f'{stated} in the {where} config.')
    heads = stated if stated is not None else text_num_heads
    if heads is None:
        raise ValueError(f'Nothing states the text attention heads of this {where} checkpoint (no '
                         'num_attention_heads in its embedded config or a config.json beside '
                         'it); pass --text_num_heads (API: text_num_heads=).')
    if width % heads:
        raise ValueError(f'text width {width} is not divisible by {heads} attention heads.')
    return heads


def _check_stated(where: str, pairs) -> None:
    """Raises on the first (name, stated, from shapes) whose stated value disagrees."""
    for name, stated, actual in pairs:
        if stated is not None and stated != actual:
            raise ValueError(f'the {where} config states {name}={stated}, but the tensors give '
                             f'{actual}.')


def _text_config_checks(text_config: dict | None, text: dict) -> list:
    hf = text_config or {}
    return [('hidden_size', hf.get('hidden_size'), text['width']),
            ('vocab_size', hf.get('vocab_size'), text['vocab_size']),
            ('intermediate_size', hf.get('intermediate_size'), text['mlp_dim']),
            ('max_position_embeddings', hf.get('max_position_embeddings'), text['max_positions']),
            ('type_vocab_size', hf.get('type_vocab_size'), text['type_vocab_size'])]


def _first(keys, *candidates: str) -> str:
    for candidate in candidates:
        if candidate in keys:
            return candidate
    raise KeyError(' or '.join(candidates))


def _vision_sizes(sd, blocks: str, names: dict[str, str], image_size: int | None):
    """Vision fields from shapes; ``names`` gives the keys of table, fc1, patch kernel, mask."""
    table = sd[names['table']]
    patch = sd[names['patch']].shape[-1]
    grid = (relpos.table_side(table.shape[0]) + 1) // 2
    return dict(width=sd[names['patch']].shape[0], depth=_layer_count(sd, blocks),
                num_heads=table.shape[1], mlp_dim=sd[names['fc1']].shape[0], patch_size=patch,
                image_size=image_size or grid * patch, use_mask_token=names['mask'] in sd,
                abs_pos_emb='learned' if names['pos'] in sd else 'none')


def _vlm_config(fmt: str, sd, reference_config: dict | None, hf_config: dict | None,
                image_size: int | None, text_num_heads: int | None):
    reference_config = reference_config or {}
    embedded = reference_config.get(EXPORTED_CONFIG_KEY)
    if embedded is not None:
        config = ml_collections.ConfigDict(embedded)
        _text_heads(config.text.width, {'num_attention_heads': config.text.num_heads},
                    text_num_heads, 'embedded xfm_jax_model')
        if image_size:
            config.vision.image_size = image_size
        return config
    from configs import x2vlm_base, x2vlm_large, xfm_base
    vision = _vision_sizes(sd, 'vision_encoder.blocks.', dict(
        table='vision_encoder.blocks.0.attn.relative_position_bias_table',
        fc1='vision_encoder.blocks.0.mlp.fc1.weight',
        patch='vision_encoder.patch_embed.proj.weight',
        mask='vision_encoder.mask_token', pos='vision_encoder.pos_embed'),
        image_size or reference_config.get('image_res'))
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
        stated_split = [('text_num_hidden_layers', reference_config.get('text_num_hidden_layers'),
                         num_text),
                        ('fusion_num_hidden_layers',
                         reference_config.get('fusion_num_hidden_layers'), num_fusion)]
    else:  # one stack: the layers with cross-attention are the fusion layers
        cross = f'{text}encoder.layer.{{}}.crossattention.self.query.weight'
        num_text = min((i for i in range(total) if cross.format(i) in sd), default=total)
        num_fusion = total - num_text
        stated_split = [('text_num_hidden_layers', reference_config.get('text_num_hidden_layers'),
                         total),
                        ('text_fusion_start_at', reference_config.get('text_fusion_start_at'),
                         num_text)]
    text_config = stated_text_config(reference_config, hf_config)
    config.text.update(
        vocab_size=word.shape[0], width=width, depth=num_text,
        num_heads=_text_heads(width, text_config, text_num_heads, fmt),
        mlp_dim=sd[f'{text}encoder.layer.0.intermediate.dense.weight'].shape[0],
        max_positions=sd[f'{text}embeddings.position_embeddings.weight'].shape[0],
        type_vocab_size=sd[f'{text}embeddings.token_type_embeddings.weight'].shape[0])
    if text_config:
        config.text.ln_eps = text_config.get('layer_norm_eps', config.text.ln_eps)
        config.text.pad_id = text_config.get('pad_token_id', config.text.pad_id)
    config.fusion.depth = num_fusion
    config.embed_dim = sd['vision_proj.weight'].shape[0]
    frames = sd.get('absolute_frame_pos_embed')
    config.video_frames = 0 if frames is None else frames.shape[1]
    _check_stated(fmt, stated_split + _text_config_checks(text_config, config.text) + [
        ('patch_size', reference_config.get('patch_size'), config.vision.patch_size),
        ('embed_dim', reference_config.get('embed_dim'), config.embed_dim)])
    return config


def _hf_text_config(fmt: str, sd, hf_config: dict | None, text_num_heads: int | None) -> dict:
    from configs import common
    variant = fmt.removeprefix('hf_')
    defaults = common.bert_config() if variant == 'bert' else common.roberta_config()
    infix = f'{variant}.' if any(k.startswith(f'{variant}.') for k in sd) else ''
    word = sd[f'{infix}embeddings.word_embeddings.weight']
    hf = hf_config or {}
    return dict(
        variant=variant, vocab_size=word.shape[0], width=word.shape[1],
        depth=_layer_count(sd, f'{infix}encoder.layer.'),
        num_heads=_text_heads(word.shape[1], hf, text_num_heads, fmt),
        mlp_dim=sd[f'{infix}encoder.layer.0.intermediate.dense.weight'].shape[0],
        max_positions=sd[f'{infix}embeddings.position_embeddings.weight'].shape[0],
        type_vocab_size=sd[f'{infix}embeddings.token_type_embeddings.weight'].shape[0],
        pad_id=hf.get('pad_token_id', defaults.pad_id),
        ln_eps=hf.get('layer_norm_eps', defaults.ln_eps),
        mlm_head=any(k.startswith(('cls.predictions.', 'lm_head.')) for k in sd))


def _beit2_config(sd, image_size: int | None) -> dict:
    table = _first(sd, 'blocks.0.attn.relative_position_bias_table',
                   'rel_pos_bias.relative_position_bias_table')
    config = _vision_sizes(sd, 'blocks.', dict(
        table=table, fc1='blocks.0.mlp.fc1.weight', patch='patch_embed.proj.weight',
        mask='mask_token', pos='pos_embed'), image_size)
    config['ln_eps'] = 1e-6  # BEiT builds every LayerNorm with eps=1e-6
    return config


def _hf_vision_config(sd, hf_config: dict | None, image_size: int | None) -> dict:
    """``sd`` in hub (transformers 4) names."""
    infix = 'beit.' if any(k.startswith('beit.') for k in sd) else ''
    table = _first(sd, f'{infix}encoder.layer.0.attention.attention.relative_position_bias.'
                       'relative_position_bias_table',
                   f'{infix}encoder.relative_position_bias.relative_position_bias_table')
    config = _vision_sizes(sd, f'{infix}encoder.layer.', dict(
        table=table, fc1=f'{infix}encoder.layer.0.intermediate.dense.weight',
        patch=f'{infix}embeddings.patch_embeddings.projection.weight',
        mask=f'{infix}embeddings.mask_token', pos=f'{infix}embeddings.position_embeddings'),
        image_size)
    config['ln_eps'] = (hf_config or {}).get('layer_norm_eps', 1e-6)
    return config


def infer_model_config(fmt: str, state_dict: dict[str, np.ndarray], *,
                       reference_config: dict | None = None, hf_config: dict | None = None,
                       image_size: int | None = None, text_num_heads: int | None = None) -> dict:
    """The config of the module ``fmt`` converts into, as a JSON-able dict.

    ``state_dict`` in the names :func:`weights.import_params` maps (hub names for hf_beit).
    ``image_size`` sets the target resolution (tables are resized on import); without it the
    reference config's ``image_res``, else the stored tables', is used. ``text_num_heads``: the
    text attention heads where no config states them (an error where one states others).
    """
    try:
        if fmt in ('xfm', 'x2vlm'):
            return _vlm_config(fmt, state_dict, reference_config, hf_config, image_size,
                               text_num_heads).to_dict()
        if fmt in ('hf_bert', 'hf_roberta'):
            return _hf_text_config(fmt, state_dict, hf_config, text_num_heads)
        if fmt == 'hf_beit':
            return _hf_vision_config(state_dict, hf_config, image_size)
        if fmt == 'beit2':
            return _beit2_config(state_dict, image_size)
    except KeyError as e:  # a key every checkpoint of the format has
        raise ValueError(f'a {fmt} checkpoint has the key {e.args[0]}, which this state dict '
                         f'lacks: is it a {fmt} checkpoint?') from None
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
    elif fmt in ('hf_beit', 'beit2'):
        fields = {f.name for f in dataclasses.fields(VisionConfig)}
        vision = VisionConfig(**{k: v for k, v in model_config.items() if k in fields})
        images = jnp.zeros((1, vision.image_size, vision.image_size, 3))
        init = lambda r: VisionTransformer(vision).init(r, images)  # noqa: E731
    else:
        raise ValueError(f'Unknown format {fmt!r}.')
    variables = jax.eval_shape(init, rng) if abstract else init(rng)
    return variables['params']
