"""Task metrics, losses, readers and pair construction on hand-made cases."""

import math

import numpy as np
import pytest

from xfm_jax import finetune
from xfm_jax.finetuning import common, nlvr, text_classification


def test_regression_scores_by_hand():
    # predictions 2x the targets plus 1: perfectly correlated, ranks equal.
    targets = np.array([0.0, 1.0, 3.0, 4.0])
    out = common.score_regression(2 * targets + 1, targets, train_targets=np.array([1.0, 3.0]))
    assert out['pearson'] == pytest.approx(100.0) and out['spearman'] == pytest.approx(100.0)
    # errors 1, 2, 4, 5 -> MSE (1 + 4 + 16 + 25) / 4; chance predicts the training mean 2.
    assert out['mse'] == pytest.approx(46 / 4)
    assert out['chance/mse'] == pytest.approx((4 + 1 + 1 + 4) / 4)
    # Reversed order: Spearman -100; Pearson of (3, 1, 0, 4)-like values by hand.
    assert common.score_regression(-targets, targets, targets)['spearman'] == pytest.approx(-100)
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    # centred: (-1, 0, 1) . (-1, 1, 0) = 1; norms sqrt(2) each -> 0.5.
    assert common.score_regression(a, b, b)['pearson'] == pytest.approx(50.0)


def test_classifier_scores_and_chance_by_hand():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 1])
    out = common.score_classifier(logits, labels, train_labels=np.array([1, 1, 0]))
    assert out['accuracy'] == 50.0  # rows 0 and 1 right
    assert out['chance/accuracy'] == 75.0  # the commonest training label 1 is 3 of 4


def test_losses_by_hand():
    import jax.numpy as jnp
    loss, metrics = common.classification_loss(jnp.zeros((2, 4)), jnp.array([0, 3]))
    assert float(loss) == pytest.approx(math.log(4))
    logits = jnp.array([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    loss, metrics = common.classification_loss(logits, jnp.array([1]))
    assert float(loss) == pytest.approx(-math.log(0.75)) and float(metrics['accuracy']) == 1.0
    loss, metrics = common.regression_loss(jnp.array([[1.0], [4.0]]), jnp.array([2.0, 2.0]))
    assert float(loss) == pytest.approx((1 + 4) / 2) and float(metrics['mae']) == 1.5


def test_examples_take_resolves_image_references():
    images = np.arange(3, dtype=np.float32)[:, None, None, None] * np.ones((3, 2, 2, 3))
    ex = common.Examples(rows={'left_index': np.array([2, 0]), 'right_index': np.array([1, 1]),
                               'label': np.array([1, 0])}, images=images)
    batch = ex.take(np.array([1, 0]))
    assert batch['left_image'][:, 0, 0, 0].tolist() == [0, 2]
    assert batch['right_image'][:, 0, 0, 0].tolist() == [1, 1]
    assert batch['label'].tolist() == [0, 1] and 'left_index' not in batch
    with pytest.raises(ValueError, match='different lengths'):
        common.Examples(rows={'a': np.zeros(2), 'b': np.zeros(3)})


def test_nlvr_pairs_are_labelled_by_the_side_they_name():
    objects = [['a red circle', 'a blue square'], ['a red circle'], ['a green diamond']]
    left, right, statements, labels = nlvr.make_pairs(objects, 200, np.random.default_rng(0))
    for l, r, statement, label in zip(left, right, statements, labels):
        side = 'left' if statement.startswith('the left') else 'right'
        thing = statement.split(' shows ')[1]
        assert l != r
        assert label == (thing in objects[l if side == 'left' else r])
    assert 0.3 < labels.mean() < 0.8  # both labels are common


class _WordTokenizer:
    """ids = word lengths + 10, wrapped cls=0 ... sep=2, pad=1 (stands in for eval_data's)."""
    class specials:
        pad, cls, sep = 1, 0, 2

    def __init__(self, length):
        self.length = length

    def __call__(self, texts):
        out = np.ones((len(texts), self.length), np.int32)
        for i, text in enumerate(texts):
            ids = [0] + [10 + len(w) for w in text.split()][:self.length - 2] + [2]
            out[i, :len(ids)] = ids
        return out


def test_sentence_pairs_are_encoded_with_roberta_separators():
    tok = _WordTokenizer(8)
    ids = text_classification.encode(tok, [('ab c', 'xyz')], 8, double_separator=True)
    assert ids.tolist() == [[0, 12, 11, 2, 2, 13, 2, 1]]
    ids = text_classification.encode(tok, [('ab c', 'xyz')], 8, double_separator=False)
    assert ids.tolist() == [[0, 12, 11, 2, 13, 2, 1, 1]]
    # Too long: the first text is cut, the second kept, the row still ends with sep.
    ids = text_classification.encode(tok, [('a b c d e', 'xy z')], 6, double_separator=True)
    assert ids.tolist() == [[0, 2, 2, 12, 11, 2]]


def test_glue_tsv_reader(tmp_path):
    path = tmp_path / 'dev.tsv'
    path.write_text('sentence\tlabel\nit was "fine\t1\nbad\t0\nno label\t\n')
    texts, labels = text_classification.read_glue_tsv(str(path), ['sentence'], 'label')
    assert texts == [('it was "fine',), ('bad',)] and labels == ['1', '0']  # quotes kept
    with pytest.raises(ValueError, match=r"no column\(s\) \['question'\]"):
        text_classification.read_glue_tsv(str(path), ['question'], 'label')
    with pytest.raises(FileNotFoundError, match='dev'):
        text_classification.read_glue_tsv(str(tmp_path / 'x.tsv'), ['sentence'], 'label')


def test_table_shows_chance_beside_each_metric():
    table = finetune.format_table({'accuracy': 80.0, 'chance/accuracy': 25.0,
                                   'itm/t2i_r1': 40.0, 'chance/t2i_r1': 10.0, 'num': 3.0})
    lines = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:]}
    assert lines == {'accuracy': ['80.000', '25.000'], 'itm/t2i_r1': ['40.000', '10.000'],
                     'num': ['3.000']}
