"""Zero-shot video-text retrieval (X²-VLM, docs/design.md §12 MSRVTT text->video R@1): each clip is
encoded as in pre-training (``config.model.video_frames`` frames through the ViT, plus the learned
frame embedding, mean over frames), ranked against the captions by ITC, and each query's top-k
candidates re-ranked by the ITM match probability, exactly as image retrieval
(``retrieval.rank_and_rerank``). Frames: the middle one of each equal segment of the clip.

Settings (``config.evaluate.video_retrieval``): ``source`` (a video-schema source: synthetic
clips, ``video_frames`` user data; '': the first source of ``data.streams.video.mixture``),
``split``, ``max_videos`` (0: all), ``k`` (candidates re-ranked per query).

Metrics (percent): ``itc/{t2v,v2t}_r{1,5,10}`` (ITC alone), ``itm/...`` (after re-ranking),
``chance/...`` (a random ranking), plus ``num_videos``, ``num_texts``; ``nonfinite`` instead of the
recalls when the model's scores are not finite.
"""

from __future__ import annotations

from xfm_jax.evaluators import batching, data, retrieval


def evaluate(ctx: batching.EvalContext, settings) -> dict[str, float]:
    ds = data.load_video(ctx.config, settings.source, settings.split, settings.max_videos)
    video_embedding, video_tokens = ctx.map(
        batching.video_encoder(ctx.model), ds.num_videos, batching.take({'frames': ds.frames}),
        'video retrieval: videos')
    ranked, _ = retrieval.rank_and_rerank(ctx, video_embedding, video_tokens, ds.caption_ids,
                                          ds.caption_video, settings.k, 'video retrieval')
    out = {name.replace('t2i', 't2v').replace('i2t', 'v2t'): value
           for name, value in ranked.items()}
    out.update(num_videos=float(ds.num_videos), num_texts=float(len(ds.caption_ids)))
    return out
