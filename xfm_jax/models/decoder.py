"""The answer decoder of generative VQA (ALBEF, X-VLM; X-FM: "a generative decoder initialised
from the fusion encoder", docs/design.md §12), and the ranking of candidate answers by likelihood.

Answer ids (``cls answer sep``, padded) are embedded as the language encoder embeds its input, then
pass the fusion encoder's layer structure with CAUSAL self-attention over the answer and
cross-attention to the fused question-image states; the MLM head on top serves as the LM head
(position t predicts token t+1). :func:`params_from_model` copies every decoder parameter from a
pre-trained ``VisionLanguageModel``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xfm_jax.models.fusion import FusionEncoder
from xfm_jax.models.text import TextConfig, TextEmbeddings


class AnswerDecoder(nn.Module):
    """answer ids [B, La], answer mask [B, La], question states [B, Lq, Dt], question mask
    [B, Lq] -> next-token logits [B, La, V] (fp32)."""
    config: TextConfig  # the fusion stack's settings (depth = fusion depth)

    def setup(self):
        self.embeddings = TextEmbeddings(self.config)
        # Always its own LM head: X²-VLM's fusion shares the text encoder's, copied here.
        self.fusion = FusionEncoder(self.config, own_mlm_head=True, causal=True)

    def __call__(self, answer_ids, answer_mask, question_states, question_mask, *,
                 train: bool = False):
        x = self.embeddings(answer_ids, train=train)
        hidden = self.fusion(x, answer_mask, question_states, question_mask, train=train)
        return self.fusion.mlm_logits(hidden).astype(jnp.float32)


def params_from_model(model_params, own_mlm_head: bool):
    """The decoder's params taken from a ``VisionLanguageModel``'s params (same tensors):

        embeddings                 <- text_encoder/embeddings (word, position, type, LN)
        fusion/encoder             <- fusion_encoder/encoder (every layer; causal at use)
        fusion/decoder_embedding   <- fusion_encoder/decoder_embedding        (X-FM)
                                      text_encoder/embeddings/word_embeddings (X²-VLM)
        fusion/mlm_head            <- fusion_encoder/mlm_head (X-FM), text_encoder/mlm_head

    ``model_params`` must hold the MLM head the fusion encoder uses (``fusion_mlm_logits``
    creates it). Raises ValueError when the cross-attention cannot be copied: the fusion's attends
    to image tokens of width Dv, the decoder's to question states of width Dt.
    """
    text, fusion = model_params['text_encoder'], model_params['fusion_encoder']
    if own_mlm_head:
        table, head = fusion['decoder_embedding'], fusion['mlm_head']
    else:
        table, head = text['embeddings']['word_embeddings']['embedding'], text['mlm_head']
    text_width, image_width = table.shape[-1], _cross_attention_key_width(fusion['encoder'])
    if text_width != image_width:
        raise ValueError(f'The answer decoder cannot start from the fusion encoder: its '
                         f'cross-attention reads image tokens of width {image_width}, the decoder '
                         f'reads question states of width {text_width}.')
    return {'embeddings': text['embeddings'],
            'fusion': {'encoder': fusion['encoder'], 'decoder_embedding': table,
                       'mlm_head': head}}


def _cross_attention_key_width(stack) -> int:
    """Input width of the key kernel [(layers,) Dc, H, hd] of any cross-attention in the stack."""
    layer = next(iter(stack.values()))
    return layer['cross_attention']['key']['kernel'].shape[-3]


# ---- likelihood and ranking ---------------------------------------------------------------

def sequence_log_likelihood(log_probs, ids, mask):
    """log p(answer) = sum over t >= 1 with mask[t] of log_probs[t-1, ids[t]]: every token after
    the leading cls (the decoder's start token), sep included.

    log_probs [N, L, V] (position t: the next token's distribution), ids / mask [N, L] -> [N].
    """
    picked = jnp.take_along_axis(log_probs[:, :-1], ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(picked * mask[:, 1:].astype(picked.dtype), axis=1)


def rank_answers(log_probs_fn: Callable, num_questions: int, answer_ids, answer_mask,
                 k: int = 0):
    """Scores every (question, candidate answer) by the answer's log-likelihood -> [Q, A] fp32.

    ``log_probs_fn(question_index [n], ids [n, L], mask [n, L]) -> [n, L, V]`` next-token
    log-probabilities given those questions. ``k`` = 0 or >= A: every candidate's full likelihood
    (cost Q x A decoder passes; fine for small answer lists). 0 < k < A: ALBEF's ranking: the k
    candidates with the likeliest FIRST token (one decoder step per question) get their full
    likelihood; the others score -inf.
    """
    num_answers = answer_ids.shape[0]

    def likelihood(question_index, answer_index):  # both [n] -> [n]
        ids, mask = answer_ids[answer_index], answer_mask[answer_index]
        return sequence_log_likelihood(log_probs_fn(question_index, ids, mask), ids, mask)

    questions = jnp.arange(num_questions)
    if not 0 < k < num_answers:
        return likelihood(jnp.repeat(questions, num_answers),
                          jnp.tile(jnp.arange(num_answers), num_questions)
                          ).reshape(num_questions, num_answers)
    start = jnp.broadcast_to(answer_ids[:1, :1], (num_questions, 1))
    first = log_probs_fn(questions, start, jnp.ones_like(start))[:, 0]  # [Q, V]
    _, top = jax.lax.top_k(first[:, answer_ids[:, 1]], k)  # [Q, k]
    scores = likelihood(jnp.repeat(questions, k), top.reshape(-1)).reshape(num_questions, k)
    out = jnp.full((num_questions, num_answers), -jnp.inf, jnp.float32)
    return out.at[questions[:, None], top].set(scores)
