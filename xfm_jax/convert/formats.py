"""Reference key names of every supported checkpoint format, as :class:`rules.Rule` lists.

Formats:
  xfm         X-FM (zhangxinsong-nlp/XFM) pre-train or fine-tuned checkpoint -> the whole model.
  x2vlm       X²-VLM (zengyan-97/X2-VLM) checkpoint -> the whole model; its 18-layer BERT stack
              splits into our text encoder (layers 0..T-1) and fusion encoder (T..T+F-1).
  hf_bert     HF BertModel / BertForMaskedLM -> our TextEncoder (or FusionEncoder: cross-attention).
  hf_roberta  HF RobertaModel / RobertaForMaskedLM -> our TextEncoder.
  hf_beit     HF BeitModel (per-layer or one shared relative position table) -> VisionTransformer.
  beit2       released BEiT-2 weights (unilm ``beitv2_*_pt1k*.pth``, timm ``beitv2_*``: the same
              names) -> VisionTransformer, as both references initialise their vision tower.

Each builder lists the rules for the largest structure of the format, sized by the layer counts
of the target; :func:`key_map` keeps the rules whose targets the target tree has. So a source
tensor the target has no place for stays unused and the import reports it, and a target
parameter that no rule fills is reported too: nothing is dropped or invented silently.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable

from xfm_jax.convert.rules import Rule, Tied

FORMATS = ('xfm', 'x2vlm', 'hf_bert', 'hf_roberta', 'hf_beit', 'beit2')

_BUFFERS = (
    (r'(^|\.)position_ids$', 'buffer, recomputed'),
    (r'(^|\.)relative_position_index$', 'buffer, recomputed'),
)
_POOLER = ((r'(^|\.)pooler\.', 'pooler, unused by X-FM / X²-VLM'),)
_REFERENCE_EXTRAS = (
    # Every RobertaForMaskedLM of the X-FM code (its text AND its fusion encoder) owns one.
    (r'^((text|fusion)_encoder\.)?lm_cap_head\.',
     'captioning LM head, used only by captioning fine-tuning, not part of this model'),
    (r'^fusion_proj\.', 'Linear the X-FM code creates when vision and text widths differ; '
                        'no forward path uses it'),
    (r'^vqkd\.', 'visual tokenizer teacher, not part of this model'),
    (r'^lm_head\.', 'visual-token head of the vqkd MIM variant, not part of this model'),
)


@dataclasses.dataclass(frozen=True)
class KeyMap:
    rules: tuple[Rule, ...]
    tied: tuple[Tied, ...]
    ignored: tuple[tuple[str, str], ...]  # (regex on reference keys, reason)

    def ignore_reason(self, key: str) -> str | None:
        for pattern, reason in self.ignored:
            if re.search(pattern, key):
                return reason
        return None


# ---- building blocks ---------------------------------------------------------------------------

def _copy(src: str, dst: str) -> list[Rule]:
    return [Rule('copy', (src,), (dst,))]


def _norm(src: str, dst: str) -> list[Rule]:
    """PyTorch LayerNorm weight/bias -> flax LayerNorm scale/bias."""
    return [Rule('copy', (f'{src}.weight',), (f'{dst}/scale',)),
            Rule('copy', (f'{src}.bias',), (f'{dst}/bias',))]


def _linear(src: str, dst: str, kind: str = 'linear', bias: bool = True) -> list[Rule]:
    rules = [Rule(kind, (f'{src}.weight',), (f'{dst}/kernel',))]
    if bias:
        rules.append(Rule('bias', (f'{src}.bias',), (f'{dst}/bias',)))
    return rules


def _count(spec: Collection[str], prefix: str) -> int:
    """How many ``{prefix}{i}/`` modules the (looped) target has."""
    pattern = re.compile(re.escape(prefix) + r'(\d+)/')
    indices = {int(m.group(1)) for path in spec if (m := pattern.match(path))}
    return max(indices) + 1 if indices else 0


def _has_prefix(keys: Iterable[str] | None, prefix: str, default: bool) -> bool:
    return default if keys is None else any(k.startswith(prefix) for k in keys)


# ---- vision --------------------------------------------------------------------------------------

def _pos_embed(spec, src: str, dst: str) -> list[Rule]:
    """The learned absolute position embedding [1, 1+N, D], where the model has one
    (``model.vision.abs_pos_emb='learned'``; BEiT's ``use_abs_pos_emb``)."""
    return _copy(src, f'{dst}pos_embed') if f'{dst}pos_embed' in spec else []


def _beit_reference(spec, src: str, dst: str, shared_table: str | None = None) -> list[Rule]:
    """BEiT-2 as in the X-FM / X²-VLM code (timm names, fused qkv, q/v biases, gamma_1/2).
    ``shared_table``: the key of one table that every block takes (BEiT's shared variant)."""
    rules = (_copy(f'{src}cls_token', f'{dst}cls_token')
             + _copy(f'{src}mask_token', f'{dst}mask_token')
             + [Rule('conv', (f'{src}patch_embed.proj.weight',), (f'{dst}patch_embed/kernel',)),
                Rule('bias', (f'{src}patch_embed.proj.bias',), (f'{dst}patch_embed/bias',))]
             + _norm(f'{src}fc_norm', f'{dst}fc_norm')
             + _pos_embed(spec, f'{src}pos_embed', dst))
    for i in range(_count(spec, f'{dst}encoder/blocks_')):
        b, t = f'{src}blocks.{i}.', f'{dst}encoder/blocks_{i}/'
        rules += _norm(f'{b}norm1', f'{t}norm1') + _norm(f'{b}norm2', f'{t}norm2')
        rules.append(Rule('qkv', (f'{b}attn.qkv.weight',),
                          tuple(f'{t}attn/{p}/kernel' for p in ('query', 'key', 'value'))))
        rules += [Rule('bias', (f'{b}attn.q_bias',), (f'{t}attn/query/bias',)),
                  Rule('bias', (f'{b}attn.v_bias',), (f'{t}attn/value/bias',)),
                  Rule('relpos', (shared_table or f'{b}attn.relative_position_bias_table',),
                       (f'{t}relative_position_bias_table',))]
        rules += (_linear(f'{b}attn.proj', f'{t}attn/out', 'linear_out')
                  + _linear(f'{b}mlp.fc1', f'{t}mlp/fc1') + _linear(f'{b}mlp.fc2', f'{t}mlp/fc2')
                  + _copy(f'{b}gamma_1', f'{t}gamma_1') + _copy(f'{b}gamma_2', f'{t}gamma_2'))
    return rules


def _beit_hf(spec, src: str, dst: str, shared_table: bool) -> list[Rule]:
    """HF BeitModel (hub names, as saved by transformers 4.x). A shared table (BEiT-1 style
    ``use_shared_relative_position_bias``) is copied into every block."""
    rules = (_copy(f'{src}embeddings.cls_token', f'{dst}cls_token')
             + _copy(f'{src}embeddings.mask_token', f'{dst}mask_token')
             + [Rule('conv', (f'{src}embeddings.patch_embeddings.projection.weight',),
                     (f'{dst}patch_embed/kernel',)),
                Rule('bias', (f'{src}embeddings.patch_embeddings.projection.bias',),
                     (f'{dst}patch_embed/bias',))]
             + _norm(f'{src}pooler.layernorm', f'{dst}fc_norm')
             + _pos_embed(spec, f'{src}embeddings.position_embeddings', dst))
    for i in range(_count(spec, f'{dst}encoder/blocks_')):
        b, t = f'{src}encoder.layer.{i}.', f'{dst}encoder/blocks_{i}/'
        table = (f'{src}encoder.relative_position_bias.relative_position_bias_table' if shared_table
                 else f'{b}attention.attention.relative_position_bias.relative_position_bias_table')
        rules += (_norm(f'{b}layernorm_before', f'{t}norm1')
                  + _norm(f'{b}layernorm_after', f'{t}norm2')
                  + _linear(f'{b}attention.attention.query', f'{t}attn/query')
                  + _linear(f'{b}attention.attention.key', f'{t}attn/key', bias=False)
                  + _linear(f'{b}attention.attention.value', f'{t}attn/value')
                  + _linear(f'{b}attention.output.dense', f'{t}attn/out', 'linear_out')
                  + _linear(f'{b}intermediate.dense', f'{t}mlp/fc1')
                  + _linear(f'{b}output.dense', f'{t}mlp/fc2')
                  + _copy(f'{b}lambda_1', f'{t}gamma_1') + _copy(f'{b}lambda_2', f'{t}gamma_2')
                  + [Rule('relpos', (table,), (f'{t}relative_position_bias_table',))])
    return rules


# transformers >= 5 renamed BEiT's modules in memory (it converts hub names when loading); an
# in-memory state dict is brought back to the hub names before mapping.
_HF5_BEIT_NAMES = (
    (r'^(beit\.)?layers\.(\d+)\.', r'\1encoder.layer.\2.'),
    (r'\.attention\.q_proj\.', '.attention.attention.query.'),
    (r'\.attention\.k_proj\.', '.attention.attention.key.'),
    (r'\.attention\.v_proj\.', '.attention.attention.value.'),
    (r'\.attention\.o_proj\.', '.attention.output.dense.'),
    (r'\.mlp\.fc1\.', '.intermediate.dense.'),
    (r'\.mlp\.fc2\.', '.output.dense.'),
    (r'(layer\.\d+)\.relative_position_bias\.',
     r'\1.attention.attention.relative_position_bias.'),
    (r'^(beit\.)?shared_position_bias\.', r'\1encoder.relative_position_bias.'),
)


def hub_beit_names(keys: Iterable[str]) -> dict[str, str]:
    """{key: hub key} for BEiT state-dict keys in transformers>=5 in-memory naming."""
    renamed = {}
    for key in keys:
        new = key
        for pattern, repl in _HF5_BEIT_NAMES:
            new = re.sub(pattern, repl, new)
        renamed[key] = new
    return renamed


# ---- text ----------------------------------------------------------------------------------------

def _bert_embeddings(src: str, dst: str) -> list[Rule]:
    rules = []
    for name in ('word_embeddings', 'position_embeddings', 'token_type_embeddings'):
        rules += _copy(f'{src}{name}.weight', f'{dst}{name}/embedding')
    return rules + _norm(f'{src}LayerNorm', f'{dst}norm')


def _bert_layer(src: str, dst: str) -> list[Rule]:
    """A BERT/RoBERTa layer; the cross-attention rules apply only where the target has them."""
    rules = []
    for ref, ours in (('attention', 'attention'), ('crossattention', 'cross_attention')):
        for proj in ('query', 'key', 'value'):
            rules += _linear(f'{src}{ref}.self.{proj}', f'{dst}{ours}/{proj}')
        rules += (_linear(f'{src}{ref}.output.dense', f'{dst}{ours}/out', 'linear_out')
                  + _norm(f'{src}{ref}.output.LayerNorm', f'{dst}{ours}_norm'))
    return (rules + _linear(f'{src}intermediate.dense', f'{dst}ffn/intermediate')
            + _linear(f'{src}output.dense', f'{dst}ffn/output')
            + _norm(f'{src}output.LayerNorm', f'{dst}output_norm'))


def _bert_stack(spec, src_layer: str, dst: str, first: int = 0) -> list[Rule]:
    """Our ``{dst}encoder/layers_{j}`` <- reference ``{src_layer}{first + j}.``."""
    rules = []
    for j in range(_count(spec, f'{dst}encoder/layers_')):
        rules += _bert_layer(f'{src_layer}{first + j}.', f'{dst}encoder/layers_{j}/')
    return rules


def _mlm_head(src: str, dst: str, variant: str, word_key: str,
              decoder_target: str | None = None) -> tuple[list[Rule], list[Tied]]:
    """BERT ``cls.predictions.*`` or RoBERTa ``lm_head.*``. The decoder weight is the word
    embedding table (tied); with ``decoder_target`` (X-FM fusion) it is our own parameter and
    the fusion stack's unused word embeddings are its tied second name."""
    dense, norm = (('transform.dense', 'transform.LayerNorm') if variant == 'bert'
                   else ('dense', 'layer_norm'))
    rules = (_linear(f'{src}{dense}', f'{dst}dense') + _norm(f'{src}{norm}', f'{dst}norm')
             + _copy(f'{src}bias', f'{dst}bias'))
    head = f'{dst}dense/kernel'
    tied = [Tied(f'{src}decoder.bias', f'{src}bias', head)]
    if decoder_target is None:
        tied.append(Tied(f'{src}decoder.weight', word_key, head))
    else:
        rules += _copy(f'{src}decoder.weight', decoder_target)
        tied.append(Tied(word_key, f'{src}decoder.weight', head))
    return rules, tied


def _heads() -> list[Rule]:
    rules = _linear('vision_proj', 'vision_proj/dense') + _linear('text_proj', 'text_proj/dense')
    for head in ('itm_head', 'bbox_head'):  # nn.Sequential(Linear, LayerNorm, GELU, Linear)
        rules += (_linear(f'{head}.0', f'{head}/0') + _norm(f'{head}.1', f'{head}/1')
                  + _linear(f'{head}.3', f'{head}/3'))
    return rules + _copy('temp', 'temp') + _copy('absolute_frame_pos_embed', 'frame_embed')


# ---- formats -------------------------------------------------------------------------------------

def _xfm(spec, keys):
    text = ('text_encoder.roberta.' if _has_prefix(keys, 'text_encoder.roberta.', True)
            else 'text_encoder.')
    fusion = ('fusion_encoder.roberta.' if _has_prefix(keys, 'fusion_encoder.roberta.', True)
              else 'fusion_encoder.')
    text_head, text_tied = _mlm_head('text_encoder.lm_head.', 'text_encoder/mlm_head/', 'roberta',
                                     f'{text}embeddings.word_embeddings.weight')
    fusion_head, fusion_tied = _mlm_head(
        'fusion_encoder.lm_head.', 'fusion_encoder/mlm_head/', 'roberta',
        f'{fusion}embeddings.word_embeddings.weight',
        decoder_target='fusion_encoder/decoder_embedding')
    rules = (_beit_reference(spec, 'vision_encoder.', 'vision_encoder/')
             + _bert_embeddings(f'{text}embeddings.', 'text_encoder/embeddings/')
             + _bert_stack(spec, f'{text}encoder.layer.', 'text_encoder/')
             + _bert_stack(spec, f'{fusion}encoder.layer.', 'fusion_encoder/')
             + text_head + fusion_head + _heads())
    ignored = _BUFFERS + _POOLER + _REFERENCE_EXTRAS + (
        (r'^fusion_encoder\.(roberta\.)?embeddings\.'
         r'(position_embeddings|token_type_embeddings|LayerNorm)\.',
         'fusion embeddings are unused: the fusion encoder takes the language hidden states'),)
    return rules, text_tied + fusion_tied, ignored


def _x2vlm(spec, keys):
    text = ('text_encoder.bert.' if _has_prefix(keys, 'text_encoder.bert.', True)
            else 'text_encoder.')
    head, tied = _mlm_head('text_encoder.cls.predictions.', 'text_encoder/mlm_head/', 'bert',
                           f'{text}embeddings.word_embeddings.weight')
    num_text = _count(spec, 'text_encoder/encoder/layers_')
    rules = (_beit_reference(spec, 'vision_encoder.', 'vision_encoder/')
             + _bert_embeddings(f'{text}embeddings.', 'text_encoder/embeddings/')
             + _bert_stack(spec, f'{text}encoder.layer.', 'text_encoder/')
             + _bert_stack(spec, f'{text}encoder.layer.', 'fusion_encoder/', first=num_text)
             + head + _heads())
    return rules, tied, _BUFFERS + _POOLER + _REFERENCE_EXTRAS


def _hf_text(variant: str):
    def build(spec, keys):
        # MaskedLM checkpoints carry the 'bert.' / 'roberta.' infix; bare models do not.
        with_head = any(p.startswith('mlm_head/') for p in spec)
        infix = f'{variant}.' if _has_prefix(keys, f'{variant}.', with_head) else ''
        head_src = 'cls.predictions.' if variant == 'bert' else 'lm_head.'
        head, tied = _mlm_head(head_src, 'mlm_head/', variant,
                               f'{infix}embeddings.word_embeddings.weight')
        rules = (_bert_embeddings(f'{infix}embeddings.', 'embeddings/')
                 + _bert_stack(spec, f'{infix}encoder.layer.', '') + head)
        ignored = _BUFFERS + _POOLER + (
            (r'^cls\.seq_relationship\.', 'next-sentence head, unused'),)
        return rules, tied, ignored
    return build


def _hf_beit(spec, keys):
    infix = 'beit.' if _has_prefix(keys, 'beit.', False) else ''
    shared = _has_prefix(keys, f'{infix}encoder.relative_position_bias.', False)
    ignored = _BUFFERS + ((r'^classifier\.', 'image classification head, unused'),
                          (r'^lm_head\.', 'masked image modeling head, unused'))
    if 'mask_token' not in spec:
        ignored += ((r'embeddings\.mask_token$', 'this model has no MIM mask token'),)
    return _beit_hf(spec, infix, '', shared), [], ignored


_SHARED_BEIT2_TABLE = 'rel_pos_bias.relative_position_bias_table'
# Our params that a beit2 file may lack; they keep the fresh initialisation, as the references'
# non-strict load leaves them (fine-tuned files have no mask token, pre-training ones no fc_norm).
BEIT2_OPTIONAL = (r'^fc_norm/', r'^mask_token$')


def _beit2(spec, keys):
    shared = _SHARED_BEIT2_TABLE if _has_prefix(keys, _SHARED_BEIT2_TABLE, False) else None
    ignored = _BUFFERS + (
        (r'^norm\.', 'final LayerNorm of the pre-training model (before its MIM head); the '
                     'mean-pooling model the references build has fc_norm instead'),
        (r'^lm_head\.', 'masked image modeling head (visual tokens), unused'),
        (r'^cls_pt_layers\.', "BEiT-2 pre-training's extra shallow blocks for the [CLS] loss, "
                              'unused'),
        (r'^head\.', 'image classification head, unused'))
    if 'mask_token' not in spec:
        ignored += ((r'^mask_token$', 'this model has no MIM mask token'),)
    return _beit_reference(spec, '', '', shared), [], ignored


_BUILDERS = {'xfm': _xfm, 'x2vlm': _x2vlm, 'hf_bert': _hf_text('bert'),
             'hf_roberta': _hf_text('roberta'), 'hf_beit': _hf_beit, 'beit2': _beit2}


def key_map(fmt: str, spec: Collection[str], source_keys: Collection[str] | None = None) -> KeyMap:
    """Rules of ``fmt`` for a target with the (looped) param paths ``spec``.

    ``source_keys`` (import) chooses between naming variants (``bert.`` / ``roberta.`` infix or
    not, shared or per-layer BEiT tables); ``None`` (export) writes the pre-training names.
    """
    if fmt not in _BUILDERS:
        raise ValueError(f'Unknown checkpoint format {fmt!r}; supported: {FORMATS}.')
    rules, tied, ignored = _BUILDERS[fmt](spec, source_keys)
    kept = tuple(r for r in rules if all(t in spec for t in r.targets))
    return KeyMap(kept, tuple(t for t in tied if t.requires in spec), tuple(ignored))


def detect_format(keys: Collection[str], hf_config: dict | None = None) -> str:
    """The format of a state dict from its keys (and an HF config.json's model_type, if any).

    A bare HF BertModel and RobertaModel share every key name; without a config saying
    ``model_type: roberta`` such a state dict is read as BERT (pass the format to override).
    """
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has('vision_encoder.') and has('fusion_encoder.'):
        return 'xfm'
    if has('vision_encoder.') and has('text_encoder.'):
        return 'x2vlm'
    if any('patch_embeddings.projection.weight' in k for k in keys):
        return 'hf_beit'
    if 'patch_embed.proj.weight' in keys and has('blocks.'):
        return 'beit2'
    model_type = (hf_config or {}).get('model_type')
    if model_type in ('bert', 'roberta') and (has('embeddings.') or has(f'{model_type}.')):
        return f'hf_{model_type}'
    if has('roberta.') or has('lm_head.dense.'):
        return 'hf_roberta'
    if has('bert.') or has('embeddings.word_embeddings.'):
        return 'hf_bert'
    raise ValueError(f'Cannot tell the checkpoint format from its keys '
                     f'(first: {sorted(keys)[:5]}); '
                     f'pass one of {FORMATS}.')
