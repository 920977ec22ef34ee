"""xfm_jax.aot: the real train step compiled for a TPU topology on this CPU machine (needs libtpu).

A text-only tiny X-FM keeps each compile at about 10 s (the whole tiny X-FM takes about 100 s);
the step is the same function xfm_jax.train runs.
"""

import dataclasses
import math

import jax
import pytest

pytest.importorskip('libtpu', reason='AOT compiles for TPU need libtpu: pip install "jax[tpu]"')

from configs import xfm_base  # noqa: E402
from xfm_jax import aot  # noqa: E402
from xfm_jax import train_step as ts  # noqa: E402
from xfm_jax.models.model import build_model  # noqa: E402


def text_only_tiny(rules):
    config = xfm_base.get_config('tiny')
    for stream in ('image', 'image_text', 'region'):
        del config.streams[stream]
        del config.batch[stream]
    config.train.schedule = 'summed'
    config.partitioning.rules = rules
    config.partitioning.mesh = dict(data=1, fsdp=-1, tensor=1) if rules == 'fsdp' else dict(
        data=-1, fsdp=1, tensor=1)
    return config


def state_bytes(config):
    """Bytes of params + AdamW's two moments, all float32 (unsharded, unpadded)."""
    model = build_model(config.model)
    params = jax.eval_shape(ts.unboxed_state_init(model, ts.make_optimizer(config)[0]),
                            jax.random.key(0)).params
    return 3 * 4 * sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def test_report_for_v5p_2x2x1():
    # One test (not a shared fixture), so parallel test workers do not compile the same step twice.
    dp = aot.compile_report(text_only_tiny('dp'), 'v5p:2x2x1')
    fsdp = aot.compile_report(text_only_tiny('fsdp'), 'v5p:2x2x1')

    assert dp.num_devices == 4  # v5p:2x2x1 = 4 chips, one (megacore) device each
    assert (dp.mesh, fsdp.mesh) == ({'data': 4, 'fsdp': 1, 'tensor': 1},
                                    {'data': 1, 'fsdp': 4, 'tensor': 1})
    assert dp.hbm_bytes == 95 * 2 ** 30
    assert dp.fits and 0 < dp.total_bytes < 2 ** 30
    assert dp.total_bytes == (dp.argument_bytes + dp.output_bytes - dp.alias_bytes
                              + dp.temp_bytes + dp.code_bytes)
    assert '  fits: ' in dp.table()
    one_byte_short = dataclasses.replace(dp, hbm_bytes=dp.total_bytes - 1)
    assert not one_byte_short.fits and 'DOES NOT FIT' in one_byte_short.table()

    # Memory. dp: every device holds the whole state (TPU layouts may pad it) and a quarter of
    # the batch, 5 int32 text fields of [8, 16]; the donated state is updated in place.
    state = state_bytes(text_only_tiny('dp'))
    assert dp.argument_bytes >= state + 5 * 8 * 16 * 4 // 4
    assert dp.alias_bytes >= state
    assert fsdp.argument_bytes < dp.argument_bytes  # fsdp splits the state's model width

    # FLOPs. Text stream, batch 8, length 16, width 32, MLP 64, 2 layers, vocab 512; 3 x forward.
    layer = 2 * 16 * 32 * 32 * 4 + 2 * 2 * 16 * 16 * 32 + 2 * 2 * 16 * 32 * 64
    mlm_head = 2 * 16 * 32 * (32 + 512)
    assert dp.model_flops == 3 * 8 * (2 * layer + mlm_head)
    # XLA counts every matmul of the analytic count, plus elementwise work and the update.
    assert dp.xla_flops_per_device * dp.num_devices >= dp.model_flops


def test_a_step_beyond_hbm_fails(capsys):
    config = text_only_tiny('dp')
    # 2^22 sequences: the [B, 16, 512] MLM logits alone are 4 x 2^22 x 16 x 512 B = 128 GiB, spread
    # over 4 v5e chips: 32 GiB each, twice the 16 GiB of HBM.
    config.batch.text.batch_size = 2 ** 22
    assert aot.check(config, 'v5e:2x2') == 1
    assert 'v5e:2x2: DOES NOT FIT' in capsys.readouterr().out
