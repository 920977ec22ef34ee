"""Zero-shot retrieval (docs/design.md §12): rank by ITC similarity, then re-rank each query's
top-k candidates by the ITM match probability of the fusion encoder, as the papers do.

Settings (``config.evaluate.retrieval``): ``source``, ``split``, ``max_images`` (0: all),
``k`` (candidates re-ranked per query), ``gallery_queries`` (text queries drawn into a PNG in the
workdir; 0: none).

Metrics (percent): ``itc/{t2i,i2t}_r{1,5,10}`` (ITC alone), ``itm/...`` (after re-ranking),
``chance/...`` (a random ranking), plus ``num_images``, ``num_texts``; instead of the recalls,
``nonfinite`` (how many NaN / inf scores) when the model's outputs are not finite.
"""

from __future__ import annotations

import os

import numpy as np

from xfm_jax.evaluators import batching, data, gallery, metrics

KS = (1, 5, 10)


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load(ctx.config, settings.source, settings.split, settings.max_images)
    image_embedding, image_tokens = ctx.map(
        batching.image_encoder(ctx.model), ds.num_images, batching.take({'image': ds.images}),
        'retrieval: images')
    out, t2i_scores = rank_and_rerank(ctx, image_embedding, image_tokens, ds.caption_ids,
                                      ds.caption_image, settings.k, 'retrieval')
    out.update(num_images=float(ds.num_images), num_texts=float(len(ds.caption_ids)))
    if settings.gallery_queries and ctx.workdir and t2i_scores is not None:
        path = os.path.join(ctx.workdir, f'retrieval_gallery_step{ctx.step}.png')
        draw_gallery(path, ds, t2i_scores, settings.gallery_queries)
    return out


def rank_and_rerank(ctx: batching.EvalContext, item_embedding: np.ndarray,
                    item_tokens: np.ndarray, caption_ids: np.ndarray, caption_item: np.ndarray,
                    k: int, name: str) -> tuple[dict[str, float], np.ndarray]:
    """Ranks N items (images or videos) against T captions by ITC, then re-ranks each query's
    top ``k`` candidates by the ITM match probability. Shared by image and video retrieval.

    Args:
      item_embedding: [N, E] ITC embeddings; item_tokens: [N, 1+P, Dv] what the fusion encoder
        attends to.
      caption_ids: int [T, L]; caption_item: int [T], the item each caption describes.
    Returns:
      ``{itc,itm,chance}/{t2i,i2t}_r{1,5,10}`` (percent) and the re-ranked text->item scores
      [N, T] (higher = better); ``({'nonfinite': count}, None)`` when the model's scores are not
      all finite.
    """
    mask = (caption_ids != ctx.config.model.text.pad_id).astype(np.int32)
    text_embedding, text_hidden = ctx.map(
        batching.text_encoder(ctx.model), len(caption_ids),
        batching.take({'ids': caption_ids, 'mask': mask}), f'{name}: texts')
    similarity = item_embedding.astype(np.float32) @ text_embedding.astype(np.float32).T
    broken = metrics.nonfinite(name, itc_similarity=similarity)
    if broken:
        return broken, None

    # Candidate pairs: every text with its top-k items, then every item with its top-k texts.
    t2i_top = metrics.top_k_indices(similarity.T, k)  # [T, k]
    i2t_top = metrics.top_k_indices(similarity, k)  # [N, k]
    pair_text = np.concatenate([np.repeat(np.arange(len(t2i_top)), t2i_top.shape[1]),
                                i2t_top.ravel()])
    pair_item = np.concatenate([t2i_top.ravel(),
                                np.repeat(np.arange(len(i2t_top)), i2t_top.shape[1])])
    match, _ = ctx.map(
        batching.fusion_heads(ctx.model), len(pair_text),
        lambda i: {'text_hidden': text_hidden[pair_text[i]], 'mask': mask[pair_text[i]],
                   'image_tokens': item_tokens[pair_item[i]]},
        f'{name}: ITM re-ranking')
    broken = metrics.nonfinite(name, itm_match=match)
    if broken:
        return broken, None
    t2i_match = match[:t2i_top.size].reshape(t2i_top.shape)
    i2t_match = match[t2i_top.size:].reshape(i2t_top.shape)
    t2i_scores = metrics.rerank_top_k(similarity, t2i_top, t2i_match, axis=1)
    i2t_scores = metrics.rerank_top_k(similarity, i2t_top, i2t_match, axis=0)
    reranked = {**{m: v for m, v in metrics.retrieval_recall(t2i_scores, caption_item, KS)
                   .items() if m.startswith('t2i')},
                **{m: v for m, v in metrics.retrieval_recall(i2t_scores, caption_item, KS)
                   .items() if m.startswith('i2t')}}
    out = {}
    for prefix, values in (('itc', metrics.retrieval_recall(similarity, caption_item, KS)),
                           ('itm', reranked),
                           ('chance', metrics.retrieval_chance(caption_item, len(similarity),
                                                               KS))):
        out.update({f'{prefix}/{m}': v for m, v in values.items()})
    return out, t2i_scores


def spread(count: int, num: int) -> np.ndarray:
    """Up to ``num`` indices spread evenly over ``range(count)`` (for galleries)."""
    return np.unique(np.linspace(0, count - 1, num).astype(int))


def draw_gallery(path: str, ds: data.EvalSet, t2i_scores: np.ndarray, num_queries: int,
                 top: int = 5) -> None:
    """PNG: one row per text query (``num_queries`` captions spread over the set): the caption,
    then its ``top`` images after re-ranking, the true image framed green, the others red."""
    rows = []
    for query in spread(len(ds.captions), num_queries):
        ranked = np.argsort(-t2i_scores[:, query], kind='stable')[:top]
        rows.append([gallery.Text(ds.captions[query])] + [
            gallery.Thumb(pixels, 'green' if image == ds.caption_image[query] else 'red')
            for image, pixels in zip(ranked, gallery.to_uint8(ds.images[ranked]))])
    gallery.draw(path, rows)
