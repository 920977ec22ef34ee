"""Checkpoint files (torch pickles, safetensors, Orbax) and the command line, end to end on tiny
models: a reference-format file written by the exporter imports back to the same params."""

import argparse
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from configs import x2vlm_base, xfm_base
from xfm_jax.convert import files, read_checkpoint, tree, weights, write_checkpoint
from xfm_jax.convert.__main__ import main
from xfm_jax.models import model as vlm


def _params(config_module):
    config = config_module.get_config('tiny').model
    params = vlm.init_variables(vlm.build_model(config), jax.random.key(0))['params']
    rng = np.random.default_rng(0)
    return config, jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=np.shape(x)).astype(np.float32),
                                tree.unflatten(tree.flatten(params)))


def _assert_same(a, b):
    fa, fb = tree.flatten(a), tree.flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def test_reads_bare_wrapped_and_safetensors_files(tmp_path):
    state_dict = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3), 'temp': np.float32(0.07)}
    tensors = {k: torch.tensor(v) for k, v in state_dict.items()}
    torch.save(tensors, tmp_path / 'bare.bin')
    torch.save({'model': tensors, 'config': {'image_res': 384}, 'epoch': 3}, tmp_path / 'wrapped.th')
    write_checkpoint(str(tmp_path / 'out.safetensors'), state_dict, {'image_res': 224})
    for name, config in (('bare.bin', None), ('wrapped.th', {'image_res': 384}),
                         ('out.safetensors', {'image_res': 224})):
        loaded, loaded_config, hf_config = read_checkpoint(str(tmp_path / name))
        assert loaded_config == config and hf_config is None
        assert loaded.keys() == state_dict.keys() and loaded['temp'].shape == ()
        np.testing.assert_array_equal(loaded['a.weight'], state_dict['a.weight'])


def test_bfloat16_tensors_are_read_as_float32(tmp_path):
    torch.save({'w': torch.tensor([1.5, -2.0], dtype=torch.bfloat16)}, tmp_path / 'bf16.pth')
    loaded, _, _ = read_checkpoint(str(tmp_path / 'bf16.pth'))
    assert loaded['w'].dtype == np.float32 and loaded['w'].tolist() == [1.5, -2.0]


def test_files_needing_unsafe_unpickling_are_refused(tmp_path):
    torch.save({'model': {'w': torch.zeros(2)}, 'args': argparse.Namespace(lr=1e-4)},
               tmp_path / 'unsafe.pth')
    with pytest.raises(ValueError, match='would run arbitrary code'):
        read_checkpoint(str(tmp_path / 'unsafe.pth'))


@pytest.mark.parametrize('config_module, fmt', [(xfm_base, 'xfm'), (x2vlm_base, 'x2vlm')],
                         ids=['xfm', 'x2vlm'])
def test_command_line_export_then_import_is_identity(tmp_path, capsys, config_module, fmt):
    config, params = _params(config_module)
    reference_config = {'image_res': config.vision.image_size, 'embed_dim': config.embed_dim}
    files.save_converted(str(tmp_path / 'ours'), params, dict(
        format=fmt, model=config.to_dict(), reference_config=reference_config))

    main(['--export', '--input', str(tmp_path / 'ours'), '--output', str(tmp_path / 'ref.pth')])
    saved = torch.load(tmp_path / 'ref.pth', weights_only=True)
    assert saved['config']['image_res'] == config.vision.image_size
    assert 'vision_encoder.blocks.0.attn.qkv.weight' in saved['model']

    main(['--input', str(tmp_path / 'ref.pth'), '--output', str(tmp_path / 'back'), '--scan_layers'])
    printed = capsys.readouterr().out
    assert f'format {fmt}:' in printed and 'tied duplicates checked' in printed
    restored, model_config = files.load_converted(str(tmp_path / 'back'))
    assert model_config['format'] == fmt and model_config['model']['scan_layers']
    assert model_config['reference_config'] == reference_config
    _assert_same(tree.unflatten(tree.unstack_layers(tree.flatten(restored))), params)


def test_command_line_reports_strict_errors(tmp_path):
    config, params = _params(xfm_base)
    files.save_converted(str(tmp_path / 'ours'), params, dict(format='xfm', model=config.to_dict()))
    main(['--export', '--input', str(tmp_path / 'ours'), '--output', str(tmp_path / 'ref.pth')])
    saved = torch.load(tmp_path / 'ref.pth', weights_only=True)
    del saved['model']['itm_head.3.bias']
    torch.save(saved, tmp_path / 'broken.pth')
    with pytest.raises(SystemExit, match=r'missing reference key itm_head\.3\.bias for our itm_head/3/bias'):
        main(['--input', str(tmp_path / 'broken.pth'), '--output', str(tmp_path / 'x')])
    assert not os.path.exists(tmp_path / 'x' / files.MODEL_CONFIG)


def test_model_config_is_inferred_from_a_reference_checkpoint_without_our_config(tmp_path):
    """A checkpoint with no text config: sizes come from the tensor shapes, the resolution from
    --image_size (tables resized), vision heads from the relpos tables; the text heads are
    refused until --text_num_heads states them."""
    config, params = _params(x2vlm_base)
    files.save_converted(str(tmp_path / 'ours'), params, dict(format='x2vlm', model=config.to_dict()))
    main(['--export', '--input', str(tmp_path / 'ours'), '--output', str(tmp_path / 'ref.pth')])
    saved = torch.load(tmp_path / 'ref.pth', weights_only=True)
    torch.save({'model': saved['model'], 'config': {'image_res': 32}}, tmp_path / 'plain.pth')

    with pytest.raises(SystemExit, match=r'plain\.pth: Nothing states the text attention heads'):
        main(['--input', str(tmp_path / 'plain.pth'), '--output', str(tmp_path / 'big')])
    main(['--input', str(tmp_path / 'plain.pth'), '--output', str(tmp_path / 'big'), '--image_size=48',
          '--text_num_heads=2'])
    with open(tmp_path / 'big' / files.MODEL_CONFIG) as f:
        model = json.load(f)['model']
    assert model['vision']['image_size'] == 48 and model['vision']['num_heads'] == 2
    assert model['text']['num_heads'] == 2
    assert (model['text']['depth'], model['fusion']['depth'], model['video_frames']) == (2, 2, 2)
    assert model['text']['vocab_size'] == 512 and model['embed_dim'] == 16
    restored, _ = files.load_converted(str(tmp_path / 'big'))
    assert restored['vision_encoder']['encoder']['blocks_0']['relative_position_bias_table'].shape == (124, 2)


# ---- damaged files and wrong arguments: one line naming the file, no traceback ------------------

def _one_line_exit(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    return message


def test_damaged_files_and_a_wrong_format_are_one_line_errors(tmp_path):
    torch.save({'model': {'w': torch.zeros(64)}, 'config': {}}, tmp_path / 'full.th')
    data = (tmp_path / 'full.th').read_bytes()
    (tmp_path / 'cut.th').write_bytes(data[:len(data) // 2])
    assert 'cut.th is not a readable PyTorch checkpoint' in _one_line_exit(
        ['--input', str(tmp_path / 'cut.th'), '--output', str(tmp_path / 'o')])

    write_checkpoint(str(tmp_path / 'ok.safetensors'), {'w': np.zeros(64, np.float32)})
    data = bytearray((tmp_path / 'ok.safetensors').read_bytes())
    data[:8] = (len(data) * 2).to_bytes(8, 'little')  # the header claims more bytes than exist
    (tmp_path / 'lying.safetensors').write_bytes(bytes(data))
    assert 'lying.safetensors is not a readable safetensors file' in _one_line_exit(
        ['--input', str(tmp_path / 'lying.safetensors'), '--output', str(tmp_path / 'o')])

    bert = {'embeddings.word_embeddings.weight': np.zeros((8, 4), np.float32)}
    write_checkpoint(str(tmp_path / 'bert.safetensors'), bert)
    message = _one_line_exit(['--input', str(tmp_path / 'bert.safetensors'), '--format=beit2',
                              '--output', str(tmp_path / 'o')])
    assert 'bert.safetensors: --format=beit2, but its keys are those of a hf_bert' in message
    assert not (tmp_path / 'o').exists()


def test_export_refuses_non_finite_parameters_naming_them(tmp_path):
    params = {'temp': np.float32(np.nan), 'vision_proj': {'dense': {
        'kernel': np.array([[1.0, np.inf, -np.inf]], np.float32), 'bias': np.zeros(3, np.float32)}}}
    with pytest.raises(ValueError, match=r'2 parameter\(s\) hold NaN or Inf, refusing to export: '
                                         r'temp \(1 of 1 values\), vision_proj/dense/kernel '
                                         r'\(2 of 3 values\)'):
        weights.export_params(params, 'xfm')
    files.save_converted(str(tmp_path / 'ours'), params, dict(format='xfm', model={}))
    message = _one_line_exit(['--export', '--input', str(tmp_path / 'ours'),
                              '--output', str(tmp_path / 'x.pth')])
    assert 'NaN' in message and 'temp' in message and 'vision_proj/dense/kernel' in message
    assert not (tmp_path / 'x.pth').exists()


def test_safetensors_are_read_without_torch(tmp_path):
    """A bfloat16 file written by hand (header + raw bytes), read with torch unimportable."""
    import ml_dtypes
    values = np.array([1.5, -2.0], ml_dtypes.bfloat16).tobytes()
    header = json.dumps({'w': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [0, 4]},
                         '__metadata__': {'config': json.dumps({'image_res': 32})}}).encode()
    (tmp_path / 'w.safetensors').write_bytes(len(header).to_bytes(8, 'little') + header + values)
    script = ('import sys; sys.modules["torch"] = None\n'
              'from xfm_jax.convert import files\n'
              f'sd, config, _ = files.read_checkpoint({str(tmp_path / "w.safetensors")!r})\n'
              'print(sd["w"].dtype, sd["w"].tolist(), config)')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__))))).stdout
    assert out.strip() == "float32 [1.5, -2.0] {'image_res': 32}"
