"""X²-VLM text-only MLM vs transformers: the reference runs its one BERT stack in full on text
without an image (the fusion layers' cross-attention skipped), then the MLM head. transformers'
BertForMaskedLM with text + fusion layers and no cross-attention computes exactly that."""

import jax
import numpy as np
import torch
import transformers

from configs import x2vlm_base
from xfm_jax.convert import export_params, import_params, tree
from xfm_jax.models import model as vlm


def test_x2vlm_text_mlm_runs_the_fusion_layers_without_cross_attention():
    config = x2vlm_base.get_config('tiny').model
    text = config.text
    hf = transformers.BertConfig(
        vocab_size=text.vocab_size, hidden_size=text.width,
        num_hidden_layers=text.depth + config.fusion.depth, num_attention_heads=text.num_heads,
        intermediate_size=text.mlp_dim, max_position_embeddings=text.max_positions,
        type_vocab_size=text.type_vocab_size, pad_token_id=text.pad_id,
        layer_norm_eps=text.ln_eps, attn_implementation='eager')
    torch.manual_seed(0)
    bert = transformers.BertForMaskedLM(hf).eval()
    with torch.no_grad():
        for p in bert.parameters():
            p.add_(0.1 * torch.randn_like(p))

    # Our whole model: random everywhere (vision, cross-attention, heads), then BERT's stack and
    # MLM head under the X²-VLM names.
    model = vlm.build_model(config)
    abstract = vlm.abstract_variables(model)['params']
    rng = np.random.default_rng(0)
    state_dict = export_params(tree.unflatten({
        path: rng.normal(size=leaf.shape).astype(np.float32)
        for path, leaf in tree.flatten(abstract).items()}), 'x2vlm')
    for key, value in bert.state_dict().items():
        if not key.endswith('position_ids'):
            state_dict[f'text_encoder.{key}'] = value.numpy()
    params, _ = import_params(state_dict, abstract, 'x2vlm')

    ids = rng.integers(3, text.vocab_size, (2, 7))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    def mlm_logits(p, encode):
        return model.apply({'params': p}, ids, mask, method=lambda m, i, a: m.text_mlm_logits(
            getattr(m, encode)(i, a)))

    # One compile for the logits and their gradients.
    (_, ours), grads = jax.jit(jax.value_and_grad(
        lambda p: (mlm_logits(p, 'encode_text_for_mlm').sum(),
                   mlm_logits(p, 'encode_text_for_mlm')), has_aux=True))(params)
    with torch.no_grad():
        expected = bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
    np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=2e-5, rtol=1e-5)

    # Gradients reach the fusion layers' self-attention and FFN, never their cross-attention.
    for path, g in tree.flatten(grads['fusion_encoder']).items():
        assert (np.abs(g).max() > 0) == ('cross_attention' not in path), path

    # The head right after the language encoder (the text layers alone) is something else.
    text_only = mlm_logits(params, 'encode_text')
    assert np.abs(np.asarray(text_only) - expected.numpy()).max() > 1e-2
