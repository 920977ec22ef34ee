"""The evaluators' runner: each evaluator's metrics are written as soon as it finishes (a later
failure loses nothing), and an evaluator whose source lacks what it needs is skipped with a
warning naming the source."""

import json
import logging

import jax
import pytest

from xfm_jax import evaluators, partitioning
from xfm_jax.evaluators import runner


def test_finished_results_survive_a_later_failure(eval_config, tmp_path, monkeypatch, caplog):
    config = eval_config.copy_and_resolve_references()
    config.evaluate.evaluators = 'retrieval,zero_shot_classification,grounding'

    def retrieval(ctx, settings):
        return {'t2i_r1': 12.5}

    def no_labels(ctx, settings):
        raise evaluators.SourceLacks("source 'my_pairs' has no class labels")

    def broken(ctx, settings):
        raise RuntimeError('the grounding data vanished')

    fakes = {'retrieval': retrieval, 'zero_shot_classification': no_labels,
             'grounding': broken}
    monkeypatch.setattr(evaluators, 'get', lambda name: fakes[name])
    mesh = partitioning.make_mesh(config.partitioning.mesh, jax.devices()[:1])
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match='vanished'):
        runner.run_evaluators(config, params={}, mesh=mesh, rules=(), workdir=str(tmp_path),
                              step=3, checkpoint='ckpt')
    assert "evaluator zero_shot_classification skipped: source 'my_pairs' has no class" \
        in caplog.text
    written = json.loads((tmp_path / 'eval_step3.json').read_text())
    assert written == {'step': 3, 'checkpoint': 'ckpt', 'metrics': {'retrieval/t2i_r1': 12.5}}
