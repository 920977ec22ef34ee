"""xfm_jax.load and the search CLI on a tiny training checkpoint (random params of the runlocal
X-FM, written from an 8-device mesh) and on its converted-style copy: every method against an
independent route (the pipeline's TensorFlow transform, the model's own methods on one device,
hand-summed answer log-likelihoods)."""

import dataclasses
import io
import os
import subprocess
import sys
import textwrap

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import xfm_jax
from tests.evaluators.conftest import random_arrays  # noqa: F401  (a fixture)
from xfm_jax import api, checkpoint, convert, partitioning, search, streams, train_step as ts
from xfm_jax.evaluators import batching, data
from xfm_jax.models import decoder
from xfm_jax.models.model import build_model


@pytest.fixture(scope='module')
def run_config(tmp_path_factory):
    from configs import xfm_base
    from xfm_jax.data import tasks
    directory = tmp_path_factory.mktemp('data')
    config = xfm_base.get_config('runlocal')
    config.data.tfds_data_dir = str(directory)
    config.data.vocab.path = str(directory / 'vocab.txt')
    config.checkpoint.save_on_sigterm = False
    tasks.make_vocabulary(config.data.vocab)  # writes the synthetic vocabulary the run stores
    return config


@pytest.fixture(scope='module')
def workdir(run_config, random_arrays, tmp_path_factory):  # noqa: F811
    mesh = partitioning.make_mesh({'data': 8, 'fsdp': 1, 'tensor': 1})
    model = build_model(run_config.model)
    tx, _ = ts.make_optimizer(run_config)
    abstract = jax.eval_shape(lambda r: ts.create_train_state(model, tx, r), jax.random.key(0))
    shardings = partitioning.state_shardings(abstract, mesh, partitioning.get_rules('dp'))
    # Norm scales 1 and biases 0, so that the embeddings keep their size through the layers.
    state = random_arrays(abstract, shardings).replace(params=random_arrays(
        abstract.params, shardings.params, std=0.5, init_like=True))
    workdir = tmp_path_factory.mktemp('run')
    checkpoints = checkpoint.Checkpoints(workdir / 'checkpoints', run_config)
    checkpoints.save(3, state, {}, force=True)
    checkpoints.wait()
    checkpoints.close()
    return workdir


@pytest.fixture(scope='module')
def model(workdir):
    return xfm_jax.load(workdir)


@pytest.fixture(scope='module')
def params(model):
    """The checkpoint's params on one device, read independently of ``load``."""
    mesh = partitioning.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
    abstract, shardings = partitioning.param_shardings(model.module, mesh,
                                                       partitioning.get_rules('dp'))
    return checkpoint.restore_params(model.location, abstract, shardings)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='PNG')
    return buffer.getvalue()


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (20 + 7 * i, 45 - 3 * i, 3), dtype=np.uint8)
            for i in range(count)]


CAPTIONS = ['a red circle', 'two blue squares', 'a green triangle on the left']


def test_load_reads_config_vocab_and_shards(model, workdir, run_config):
    assert model.location.step == 3 and model.location.kind == 'train'
    assert model.text_len == run_config.data.streams.image_text.text_len
    assert model.vocab.kind == 'synthetic' and os.path.exists(model.vocab.path)
    leaf = jax.tree.leaves(model.params)[0]
    assert leaf.sharding.mesh.devices.size == 8  # every local device
    with pytest.raises(FileNotFoundError, match='no checkpoint here'):
        xfm_jax.load(workdir / 'nothing')


def test_preprocess_is_the_pipelines_eval_transform(model, tmp_path):
    """Sizes below, at and above 32 px, non-square, 1x1; grey and RGBA as decode_image(3)."""
    rng = np.random.default_rng(1)
    images = _images(3) + [rng.integers(0, 256, (32, 32, 3), np.uint8),
                           rng.integers(0, 256, (1, 1, 3), np.uint8),
                           rng.integers(0, 256, (300, 7, 3), np.uint8)]
    encoded = [_png(image) for image in images]
    want = np.stack([data.resized_image(tf.constant(e), 32).numpy() for e in encoded])
    files = []
    for i, e in enumerate(encoded):
        files.append(tmp_path / f'{i}.png')
        files[-1].write_bytes(e)
    for given in (files, [os.fspath(f) for f in files], images,
                  [Image.open(io.BytesIO(e)) for e in encoded],
                  [image.astype(np.float32) / 255 for image in images]):
        np.testing.assert_allclose(model.preprocess(given), want, atol=2e-5)
    grey = rng.integers(0, 256, (17, 40), np.uint8)
    rgba = rng.integers(0, 256, (40, 17, 4), np.uint8)
    for pixels in (grey, rgba):
        np.testing.assert_allclose(
            model.preprocess(Image.fromarray(pixels))[0],
            data.resized_image(tf.constant(_png(pixels)), 32).numpy(), atol=2e-5)
    # JPEG: TensorFlow decodes with the fast integer IDCT, PIL with the accurate one (a few
    # levels apart on some pixels); the transform of the same pixels is the same.
    buffer = io.BytesIO()
    Image.fromarray(images[1]).save(buffer, format='JPEG')
    jpeg = tf.constant(buffer.getvalue())
    np.testing.assert_allclose(model.preprocess(tf.io.decode_image(jpeg, channels=3).numpy()),
                               data.resized_image(jpeg, 32).numpy()[None], atol=2e-5)
    with pytest.raises(ValueError, match=r'float image must hold values in \[0, 1\]'):
        model.preprocess(images[0].astype(np.float32))
    with pytest.raises(FileNotFoundError, match='missing.png: no such image file'):
        model.preprocess(tmp_path / 'missing.png')


def test_image_path_needs_no_tensorflow(model, workdir, tmp_path):
    """Accelerator machines often lack TensorFlow, seqio and clu: ``load``, ``preprocess`` and
    ``embed_images`` run with the three made unimportable, and give this process's answer."""
    files = []
    for i, image in enumerate(_images(3, seed=5)):
        files.append(tmp_path / f'{i}.png')
        files[-1].write_bytes(_png(image))
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        for name in ('tensorflow', 'tensorflow_datasets', 'seqio', 'clu'):
            sys.modules[name] = None  # unimportable, and absent to importlib.util.find_spec
        import xfm_jax
        model = xfm_jax.load({os.fspath(workdir)!r})
        np.save({os.fspath(tmp_path / 'out.npy')!r},
                model.embed_images({[os.fspath(f) for f in files]!r}))
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-c', script], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / 'out.npy'), model.embed_images(files),
                               atol=1e-5)


def test_embeddings_and_itc_are_the_evaluators(model, params, run_config):
    pixels = model.preprocess(_images(5))
    ids = model.tokenize(CAPTIONS)
    tokenizer = data.Tokenizer(run_config.data.vocab, streams.text_length(run_config))
    np.testing.assert_array_equal(ids, tokenizer(CAPTIONS))  # the evaluators' tokens
    module = model.module
    want_images = module.apply({'params': params}, jnp.asarray(pixels),
                               method=lambda m, x: m.image_embedding(m.encode_image(x)))
    want_texts = module.apply({'params': params}, ids, tokenizer.mask(ids),
                              method=lambda m, i, k: m.text_embedding(m.encode_text(i, k)))
    images, texts = model.embed_images(pixels), model.embed_texts(CAPTIONS)
    np.testing.assert_allclose(images, want_images, atol=1e-5)
    np.testing.assert_allclose(texts, want_texts, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(model.itc_scores(pixels, CAPTIONS), images @ texts.T, atol=1e-6)
    # Batches are padded to a power of two: 3, 5 and 7 images share one compiled shape (8 rows).
    compiled = batching.image_encoder(module)._cache_size()
    for count in (3, 7):
        model.embed_images(np.concatenate([pixels, pixels])[:count])
    assert batching.image_encoder(module)._cache_size() == compiled


def test_itm_ground_and_classify(model, params):
    pixels = model.preprocess(_images(2))
    ids = model.tokenize(CAPTIONS)
    mask = (ids != model.module.text.pad_id).astype(np.int32)

    def heads(m, image, ids, mask):
        fused = m.fuse(m.encode_text(ids, mask), mask, m.encode_image(image))
        return jax.nn.softmax(m.itm_logits(fused), axis=-1)[:, 1], m.box_prediction(fused)
    for n in range(2):
        match, box = model.module.apply({'params': params}, jnp.repeat(pixels[n:n + 1], 3, 0),
                                        ids, mask, method=heads)
        np.testing.assert_allclose(model.itm_scores(pixels, CAPTIONS)[n], match, atol=1e-5)
        cx, cy, w, h = np.asarray(box[0])
        np.testing.assert_allclose(model.ground(pixels[n:n + 1], CAPTIONS[0]),
                                   [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-5)
    assert model.ground(pixels, CAPTIONS[:2]).shape == (2, 4)
    names = ['circle', 'square', 'triangle', 'star_shape']
    prompts = ['a picture of a circle', 'a picture of a square', 'a picture of a triangle',
               'a picture of a star shape']
    assert model.classify(pixels, names) == [
        names[i] for i in model.itc_scores(pixels, prompts).argmax(axis=1)]


def _answer_log_likelihoods(model, params, weights, pixels, question, candidates):
    """[A] log-likelihoods of ``candidates`` summed by hand from the answer decoder (params
    ``weights``) over the fused question states of the model with ``params``."""
    q_ids = model.tokenize(question)
    q_mask = (q_ids != model.module.text.pad_id).astype(np.int32)
    fused = model.module.apply({'params': params}, jnp.asarray(pixels), q_ids, q_mask,
                               method=lambda m, x, i, k: m.fuse(m.encode_text(i, k), k,
                                                                m.encode_image(x)))
    answers = model.tokenize(candidates, 8)
    answer_mask = (answers != model.module.text.pad_id).astype(np.int32)
    logits = decoder.AnswerDecoder(model.module.fusion).apply(
        {'params': weights}, answers, answer_mask, jnp.repeat(fused, len(answers), 0),
        np.repeat(q_mask, len(answers), 0))
    log_probs = np.asarray(jax.nn.log_softmax(logits))  # position t predicts token t + 1
    return np.array([sum(log_probs[a, t - 1, answers[a, t]] for t in range(1, mask.sum()))
                     for a, mask in enumerate(answer_mask)])


ANSWERS = ['red', 'two', 'blue square']
QUESTION = 'what colour is the circle'


def test_answer_ranks_by_answer_likelihood(model, params):
    """A pre-trained checkpoint: the decoder started from the fusion encoder."""
    pixels = model.preprocess(_images(1))
    scores = model.answer_scores(pixels, QUESTION, ANSWERS)
    assert 'not fine-tuned' in model.answer_decoder
    weights = decoder.params_from_model(params, model.module.own_fusion_mlm_head)
    np.testing.assert_allclose(
        scores[0], _answer_log_likelihoods(model, params, weights, pixels, QUESTION, ANSWERS),
        rtol=1e-4)
    assert model.answer(pixels, QUESTION, ANSWERS) == ANSWERS[int(np.argmax(scores))]


def test_answer_of_a_generative_vqa_finetune(model, params, run_config, tmp_path):
    """A fine-tuning output (whole model + the task's decoder): its own decoder answers; a
    classifier-head fine-tune is refused by name."""
    config = run_config.copy_and_resolve_references()
    config.task = dict(name='vqa', head='generative', answer_len=8, text_len=24)
    host = jax.device_get(params)
    rng = np.random.default_rng(0)
    tuned = jax.tree.map(lambda x: x + rng.normal(0, 0.3, x.shape).astype(x.dtype),
                         decoder.params_from_model(host, model.module.own_fusion_mlm_head))
    checkpoint.save_params(tmp_path, {'params': host, 'task': {'decoder': tuned}},
                           {'format': 'xfm', 'model': config.model.to_dict(), 'task': 'vqa',
                            **checkpoint.describe_run(config)})
    finetuned = xfm_jax.load(tmp_path)
    assert finetuned.answer_decoder == 'fine-tuned decoder'
    pixels = model.preprocess(_images(1))
    want = _answer_log_likelihoods(model, params, tuned, pixels, QUESTION, ANSWERS)
    np.testing.assert_allclose(finetuned.answer_scores(pixels, QUESTION, ANSWERS)[0], want,
                               rtol=1e-4)
    assert not np.allclose(want, model.answer_scores(pixels, QUESTION, ANSWERS)[0], rtol=1e-3)


def test_answer_of_a_classifier_vqa_finetune(model, params, run_config, tmp_path):
    """A classifier-head fine-tune answers from the answer list stored with it: log-softmax of
    its head's logits, checked against the task module applied on one device."""
    from xfm_jax.finetuning import vqa
    config = run_config.copy_and_resolve_references()
    config.task = dict(name='vqa', head='classifier', text_len=24)
    answers = ['red', 'blue', 'two', 'circle']
    pixels = model.preprocess(_images(2))
    ids = model.tokenize([QUESTION] * 2, 24)
    batch = {'image': pixels, 'input_ids': ids, 'attention_mask': ids != model.module.text.pad_id}
    host = jax.device_get(params)
    head = vqa.VqaClassifier(model.module, len(answers)).init(jax.random.key(1), batch)['params']
    head = jax.device_get(flax.linen.unbox({k: v for k, v in head.items() if k != 'model'}))
    description = {'format': 'xfm', 'model': config.model.to_dict(), 'task': 'vqa',
                   **checkpoint.describe_run(config)}
    checkpoint.save_params(tmp_path / 'old', {'params': host, 'task': head}, description)
    with pytest.raises(ValueError, match='does not store its answer list'):
        xfm_jax.load(tmp_path / 'old').answer(pixels[:1], QUESTION)
    checkpoint.save_params(tmp_path / 'new', {'params': host, 'task': head},
                           {**description, 'label_names': answers})
    tuned = xfm_jax.load(tmp_path / 'new')
    assert tuned.answers == tuple(answers) and tuned.answer_decoder == 'fine-tuned classifier'
    logits = vqa.VqaClassifier(model.module, len(answers)).apply(
        {'params': {'model': host, **head}}, batch)
    want = np.asarray(jax.nn.log_softmax(logits, axis=1))
    np.testing.assert_allclose(tuned.answer_scores(pixels, QUESTION), want, atol=1e-5)
    np.testing.assert_allclose(tuned.answer_scores(pixels, QUESTION, ['two', 'red']),
                               want[:, [2, 0]], atol=1e-5)
    assert tuned.answer(pixels[:1], QUESTION) == answers[int(np.argmax(want[0]))]
    with pytest.raises(ValueError, match=r"\['green'\] are not among the 4 answers"):
        tuned.answer(pixels[:1], QUESTION, ['red', 'green'])


def test_converted_checkpoint(model, params, run_config, tmp_path):
    convert.save_converted(tmp_path, jax.device_get(params),
                           {'format': 'xfm', 'model': run_config.model.to_dict()})
    with pytest.raises(ValueError, match="states no vocabulary.*pass vocab= a vocab.json"):
        xfm_jax.load(tmp_path)
    pixels = model.preprocess(_images(2))
    want = model.itc_scores(pixels, CAPTIONS)
    for vocab in ('synthetic', run_config.data.vocab.path):
        converted = xfm_jax.load(tmp_path / 'params', vocab=vocab)
        # No stored caption length: the papers' 40 tokens, within the 40 - 2 RoBERTa positions.
        assert converted.text_len == 38
        np.testing.assert_array_equal(converted.tokenize(CAPTIONS)[:, :model.text_len],
                                      model.tokenize(CAPTIONS))
        np.testing.assert_allclose(converted.itc_scores(pixels, CAPTIONS), want, atol=1e-5)


def test_search_cli(model, workdir, tmp_path, capsys):
    folder = tmp_path / 'images'
    folder.mkdir()
    images = _images(5, seed=3)
    for i, image in enumerate(images):
        (folder / f'{i}.png').write_bytes(_png(image))
    (folder / 'notes.txt').write_text('not an image')
    out = tmp_path / 'ranked.png'
    search.main([f'--checkpoint={workdir}', f'--images={folder}', '--query=a red circle',
                 '--top=3', f'--out={out}'])
    printed = capsys.readouterr().out
    # Independently: ITC over all five, then the three best re-ordered by ITM.
    similarity = model.itc_scores(images, 'a red circle')[:, 0]
    best = np.argsort(-similarity, kind='stable')[:3]
    reranked = best[np.argsort(-model.itm_scores(np.stack(model.preprocess(images))[best],
                                                 'a red circle')[:, 0], kind='stable')]
    want = list(reranked) + [i for i in np.argsort(-similarity, kind='stable') if i not in best]
    ranked = [line.split()[-1] for line in printed.splitlines() if line.startswith('   ')]
    assert ranked == [os.fspath(folder / f'{i}.png') for i in want]
    assert Image.open(out).size[0] > 3 * 96
    with pytest.raises(SystemExit):
        search.main([f'--checkpoint={workdir}', f'--images={tmp_path}/none/*.png', '--query=x'])
    assert 'no image files' in capsys.readouterr().err
