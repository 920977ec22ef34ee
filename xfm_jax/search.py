r"""Text-to-image search over a folder of images with a trained model (``xfm_jax.load``).

    python -m xfm_jax.search --checkpoint=/tmp/xfm_runlocal --images=photos/ \
        --query="a red circle" --top=8 --out=ranked.png
    python -m xfm_jax.search --checkpoint=gs://bucket/run --images='gs://bucket/img/*.jpg' ...

Images are ranked as zero-shot retrieval ranks them: by ITC similarity to the query, then the
``--rerank`` best (default ``--top``) re-ranked by the ITM match probability of the fusion
encoder. Prints the ranking (rank, ITM probability where re-ranked, ITC similarity, file) and
writes the ``--top`` images to ``--out`` (a PNG through ``evaluators.gallery``: the query, then
the images, each under its rank and scores).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from xfm_jax import api, checkpoint, cli, paths
from xfm_jax.evaluators import gallery, metrics


def rank(model: api.Model, files: list, query: str, rerank: int) -> tuple[np.ndarray, ...]:
    """(order: image indices best first, ITC similarity [N], ITM probability [N]: NaN outside
    the re-ranked ``rerank`` best) of ``files`` for ``query``."""
    pixels = model.preprocess(files)
    similarity = model.itc_scores(pixels, query)  # [N, 1]
    match = np.full(len(files), np.nan, np.float32)
    scores = similarity
    if rerank:
        top = metrics.top_k_indices(similarity.T, rerank)  # [1, k]
        match[top[0]] = model.itm_scores(pixels[top[0]], query)[:, 0]
        scores = metrics.rerank_top_k(similarity, top, match[top], axis=1)
    return np.argsort(-scores[:, 0], kind='stable'), similarity[:, 0], match


def search(checkpoint_path: str, images: str, query: str, top: int = 8, rerank: int | None = None,
           out: str = 'ranked.png', vocab: str | None = None) -> list[tuple[str, float, float]]:
    """Ranks the images of ``images`` (a directory or a glob, local or gs://) for ``query``,
    prints the ranking, draws the ``top`` best into ``out``. Returns [(file, ITC, ITM)] best
    first (ITM NaN where not re-ranked)."""
    model = api.load(checkpoint_path, vocab=vocab)
    files = api.image_files(images)
    order, similarity, match = rank(model, files, query, top if rerank is None else rerank)
    ranking = [(os.fspath(files[i]), float(similarity[i]), float(match[i])) for i in order]
    print(f'{len(files)} images ranked for {query!r} by {model.location.tree}:')
    for place, (name, itc, itm) in enumerate(ranking, 1):
        print(f'{place:4d}  itm {itm:6.3f}  itc {itc:7.4f}  {name}')
    shown = order[:top]
    row = [gallery.Text(query, 'blue', width=24)] + [
        gallery.Thumb(api.read_image(files[i]).astype(np.uint8)) for i in shown]
    labels = [gallery.Text('', width=24)] + [
        gallery.Text(f'{place}. itm {match[i]:.2f}\nitc {similarity[i]:.3f}\n'
                     f'{files[i].name}', width=16) for place, i in enumerate(shown, 1)]
    gallery.draw(out, [row, labels])
    print(f'Wrote {paths.resolve(out)}')
    return ranking


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog='python -m xfm_jax.search', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--checkpoint', required=True, help='a training workdir or step, or a '
                        'convert / finetune output (local or gs://)')
    parser.add_argument('--images', required=True, help='a directory of images or a glob')
    parser.add_argument('--query', required=True, help='the text to search for')
    parser.add_argument('--top', type=int, default=8, help='images drawn into --out')
    parser.add_argument('--rerank', type=int, default=None,
                        help='ITC-best images re-ranked by ITM (default: --top; 0: ITC only)')
    parser.add_argument('--out', default='ranked.png', help='PNG to write (local or gs://)')
    parser.add_argument('--vocab', default=None, help='vocabulary of a converted checkpoint: '
                        "vocab.txt, vocab.json (merges.txt beside it), .model or 'synthetic'")
    args = parser.parse_args(argv)
    if args.top < 1 or (args.rerank is not None and args.rerank < 0):
        parser.error('--top must be >= 1 and --rerank >= 0')
    try:
        search(args.checkpoint, args.images, args.query, args.top, args.rerank, args.out,
               args.vocab)
    except (FileNotFoundError, ValueError, checkpoint.CheckpointError) as e:
        cli.fatal(str(e))


if __name__ == '__main__':
    main()
