r"""Compile time of the model's forward pass (all towers and heads) on this machine.

    python benchmarks/forward_compile.py --config=configs/xfm_base.py [--config.model.scan_layers=True]
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from xfm_jax.models.model import abstract_variables, build_model, dummy_inputs  # noqa: E402



def main(argv):
    del argv
    config = flags.FLAGS.config
    model = build_model(config.model)
    variables = nn.unbox(abstract_variables(model))
    inputs = dummy_inputs(model, flags.FLAGS.batch, text_len=config.batch.image_text.text_len)
    forward = jax.jit(lambda v, *x: model.apply(v, *x))
    start = time.perf_counter()
    lowered = forward.lower(variables, *inputs)
    traced = time.perf_counter() - start
    lowered.compile()
    total = time.perf_counter() - start
    print(f'{config.model.family} scan_layers={config.model.scan_layers}: trace+lower '
          f'{traced:.1f} s, compile {total - traced:.1f} s, total {total:.1f} s')


if __name__ == '__main__':
    config_flags.DEFINE_config_file('config', None, 'Run config.', lock_config=True)
    flags.DEFINE_integer('batch', 2, 'Examples in the forward pass.')
    flags.mark_flag_as_required('config')
    app.run(main)
