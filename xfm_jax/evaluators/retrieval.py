"""Zero-shot retrieval (docs/design.md §12): rank by ITC similarity, then re-rank each query's
top-k candidates by the ITM match probability of the fusion encoder, as the papers do.

Settings (``config.evaluate.retrieval``): ``source``, ``split``, ``max_images`` (0: all),
``k`` (candidates re-ranked per query), ``gallery_queries`` (queries drawn into the workdir's
``retrieval_gallery_step{step}.png``, text->image, and ``retrieval_gallery_i2t_step{step}.png``,
image->text, and to TensorBoard; a right answer outside the top 5 is shown with its rank; 0:
none).

Metrics (percent): ``itc/{t2i,i2t}_r{1,5,10}`` (ITC alone), ``itm/...`` (after re-ranking),
``chance/...`` (a random ranking), plus ``num_images``, ``num_texts``; instead of the recalls,
``nonfinite`` (how many NaN / inf scores) when the model's outputs are not finite.
"""

from __future__ import annotations

import numpy as np

from xfm_jax.evaluators import batching, data, gallery, metrics

KS = (1, 5, 10)


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load(ctx.config, settings.source, settings.split, settings.max_images)
    image_embedding, image_tokens = ctx.map(
        batching.image_encoder(ctx.model), ds.num_images, batching.take({'image': ds.images}),
        'retrieval: images')
    out, scores = rank_and_rerank(ctx, image_embedding, image_tokens, ds.caption_ids,
                                  ds.caption_image, settings.k, 'retrieval')
    out.update(num_images=float(ds.num_images), num_texts=float(len(ds.caption_ids)))
    if settings.gallery_queries and scores is not None:
        ctx.gallery('retrieval_gallery', text_to_image_rows(ds, scores[0],
                                                            settings.gallery_queries))
        ctx.gallery('retrieval_gallery_i2t', image_to_text_rows(ds, scores[1],
                                                                settings.gallery_queries))
    return out


def rank_and_rerank(ctx: batching.EvalContext, item_embedding: np.ndarray,
                    item_tokens: np.ndarray, caption_ids: np.ndarray, caption_item: np.ndarray,
                    k: int, name: str
                    ) -> tuple[dict[str, float], tuple[np.ndarray, np.ndarray] | None]:
    """Ranks N items (images or videos) against T captions by ITC, then re-ranks each query's
    top ``k`` candidates by the ITM match probability. Shared by image and video retrieval.

    Args:
      item_embedding: [N, E] ITC embeddings; item_tokens: [N, 1+P, Dv] what the fusion encoder
        attends to.
      caption_ids: int [T, L]; caption_item: int [T], the item each caption describes.
    Returns:
      ``{itc,itm,chance}/{t2i,i2t}_r{1,5,10}`` (percent) and the re-ranked scores [N, T]
      (higher = better) of each direction, ``(text->item, item->text)``;
      ``({'nonfinite': count}, None)`` when the model's scores are not all finite.
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
    return out, (t2i_scores, i2t_scores)


def spread(count: int, num: int) -> np.ndarray:
    """Up to ``num`` indices spread evenly over ``range(count)`` (for galleries)."""
    return np.unique(np.linspace(0, count - 1, num).astype(int))


def best_right_rank(scores: np.ndarray, right: np.ndarray) -> np.ndarray:
    """scores, right: [Q, C] -> [Q] 1-based rank of each query's best right candidate (ties
    count against the model, as in the recalls)."""
    return metrics.ranks_of_best_right(scores, right) + 1


def text_to_image_rows(ds: data.EvalSet, t2i_scores: np.ndarray, num_queries: int,
                       top: int = 5) -> list[list]:
    """Gallery rows, one per text query (``num_queries`` captions spread over the set): the
    caption, its ``top`` images after re-ranking (the true one framed green, the others red)
    and, when the true image is not among them, its rank and the image itself."""
    queries = spread(len(ds.captions), num_queries)
    scores = t2i_scores[:, queries].T  # [Q, N]
    right = ds.caption_image[queries, None] == np.arange(ds.num_images)[None]
    rows = []
    for row, query, rank in zip(scores, queries, best_right_rank(scores, right)):
        ranked = np.argsort(-metrics.finite_scores(row), kind='stable')[:top]
        true = ds.caption_image[query]
        cells = [gallery.Text(ds.captions[query])] + [
            gallery.Thumb(pixels, 'green' if image == true else 'red')
            for image, pixels in zip(ranked, gallery.to_uint8(ds.images[ranked]))]
        if rank > top:
            cells += [gallery.Text(f'true image:\nrank {rank}', 'green', width=12),
                      gallery.Thumb(gallery.to_uint8(ds.images[true]), 'green')]
        rows.append(cells)
    return rows


def image_to_text_rows(ds: data.EvalSet, i2t_scores: np.ndarray, num_queries: int,
                       top: int = 5) -> list[list]:
    """Gallery rows, one per image query (``num_queries`` images spread over the set): the
    image, its ``top`` captions after re-ranking (right ones in green, wrong in red, each with
    its rank) and, when no right caption is among them, the best-ranked right one with its
    rank."""
    queries = spread(ds.num_images, num_queries)
    scores = i2t_scores[queries]  # [Q, T]
    right = ds.caption_image[None, :] == queries[:, None]
    rows = []
    for row, query, is_right, rank in zip(scores, queries, right,
                                          best_right_rank(scores, right)):
        order = np.argsort(-metrics.finite_scores(row), kind='stable')
        cells = [gallery.Thumb(gallery.to_uint8(ds.images[query]))] + [
            gallery.Text(f'{r + 1}. {ds.captions[t]}', 'green' if is_right[t] else 'red',
                         width=24) for r, t in enumerate(order[:top])]
        if rank > top:
            best = order[is_right[order]][0]
            cells.append(gallery.Text(f'{rank}. {ds.captions[best]}', 'green', width=24))
        rows.append(cells)
    return rows
