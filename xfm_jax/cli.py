"""What every program does with its command line before any work: bad flags and settings stop it
at once with one line naming the flag or key (exit status 2), never a traceback from deep inside
tracing or after the first step.

    app.run(main, flags_parser=cli.parse_flags)   # absl programs: flags, then validate(config)
    cli.ArgumentParser(...)                      # argparse programs (xfm_jax.convert)

:func:`validate` checks the counts a run divides by or steps with (batch sizes, accumulation,
logging, checkpoint and evaluation intervals); library entry points may call it too.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys

from absl import flags

# Keys (dotted, fnmatch patterns) that must be integers >= 1 where a config has them: each is a
# divisor, a modulus, a loop step or a count of things that must not be empty.
AT_LEAST_ONE = (
    'batch.*.batch_size', 'data.streams.*.batch_size', 'train.batch_size',
    'train.eval_batch_size', 'evaluate.batch_size', 'train.grad_accum_steps', 'train.log_every',
    'train.total_steps', 'checkpoint.every_steps', 'checkpoint.keep', 'batch.*.text_len',
    'evaluate.*.steps', 'evaluate.*.eval_every', 'evaluate.*.k', 'evaluate.*.hidden_dim',
    'model.vision.image_size', 'model.vision.patch_size',
)
# Counts where 0 means "none" or "all" (documented beside each key) but a negative is a typo.
AT_LEAST_ZERO = (
    'train.eval_every', 'checkpoint.keep_every', 'train.profile_steps', 'task.max_train',
    'task.max_eval', 'evaluate.*.max_images', 'evaluate.*.max_videos',
    'evaluate.*.max_train_images', 'evaluate.*.max_test_images', 'evaluate.*.gallery_queries',
    'evaluate.*.gallery_phrases', 'task.gallery_questions',
)

# Rates: numbers in [0, 1].
RATES = ('data.streams.*.caption_rate', 'data.streams.*.mlm.prob')


def _leaves(config, prefix: str = ''):
    """(dotted key, value) of every non-dict value of a ConfigDict / dict tree."""
    for key, value in config.items():
        name = f'{prefix}{key}'
        if hasattr(value, 'items'):
            yield from _leaves(value, f'{name}.')
        else:
            yield name, value


def validate(config) -> None:
    """Raises ValueError (one line naming the key and its value) for a count below its minimum,
    a non-integer count, a rate outside [0, 1], or a batch size that ``train.grad_accum_steps``
    does not divide."""
    for key, value in _leaves(config):
        for patterns, low in ((AT_LEAST_ONE, 1), (AT_LEAST_ZERO, 0)):
            if not any(fnmatch.fnmatchcase(key, p) for p in patterns):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'config.{key}={value!r} must be an integer >= {low}.')
            if value < low:
                raise ValueError(f'config.{key}={value} must be >= {low}.')
        if any(fnmatch.fnmatchcase(key, p) for p in RATES) and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or not 0 <= value <= 1):
            raise ValueError(f'config.{key}={value!r} must be a number in [0, 1].')
    warmup = (config.get('optimizer') or {}).get('warmup_steps')
    total = (config.get('train') or {}).get('total_steps')
    if isinstance(warmup, int) and isinstance(total, int) and warmup >= total > 0:
        raise ValueError(f'config.optimizer.warmup_steps={warmup} must be below '
                         f'config.train.total_steps={total}.')
    accum = config.get('train', {}).get('grad_accum_steps', 1)
    for stream, shape in (config.get('batch') or {}).items():
        if shape.get('batch_size', 0) % accum:
            raise ValueError(f'config.batch.{stream}.batch_size={shape["batch_size"]} is not '
                             f'divisible by config.train.grad_accum_steps={accum}.')


def fatal(message: str, status: int = 2):
    """Exits with ``FATAL <message>`` on one line of stderr."""
    sys.stderr.write('FATAL ' + ' '.join(str(message).split()) + '\n')
    sys.exit(status)


def _one_line(error: Exception) -> str:
    """A flag error in brief: config_flags embeds a failing config file's whole traceback, whose
    last line says what went wrong."""
    text = str(error)
    if 'Traceback (most recent call last)' in text:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = f'{text.split("Traceback (most recent call last)")[0].strip()} {lines[-1]}'
    return text


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing for ``app.run(main, flags_parser=parse_flags)``, then
    :func:`validate` of ``--config`` when the program has one. Any failure is one line:
    ``FATAL Flags parsing error: ...`` naming the flag or override (config_flags reports an
    unknown key as a bare AttributeError naming only its last component), or
    ``FATAL Invalid config: ...`` naming the key."""
    try:
        rest = flags.FLAGS(argv)
    except AttributeError as error:
        key = str(error).strip('"\'')
        overrides = [a for a in argv if a.startswith('--config.')
                     and key in a.split('=')[0].split('.')]
        fatal(f'Flags parsing error: unknown config key {key!r} in '
              f'{" ".join(overrides) or "the --config.* overrides"}.')
    except (flags.Error, ValueError, TypeError, KeyError) as error:
        fatal(f'Flags parsing error: {_one_line(error)}')
    config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
    if config is not None:
        try:
            validate(config)
        except ValueError as error:
            fatal(f'Invalid config: {error}')
        except OSError as error:  # config_flags defers a config file it could not load
            fatal(f'Flags parsing error: --config: {_one_line(error)}')
    return rest


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the argument (exit status 2)."""

    def error(self, message: str):
        fatal(f'Flags parsing error: {message} (see {self.prog} --help)')
