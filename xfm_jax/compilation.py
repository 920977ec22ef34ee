"""Compilation that is never silent and never repeated: jax's persistent compilation cache (so a
restarted or resumed run loads its executables instead of compiling them again) and explicit
ahead-of-time compiles with a log line before and after.
"""

from __future__ import annotations

import os
import time

from absl import logging
import jax

from xfm_jax import paths

DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'xfm_jax', 'jax_compilation_cache')


def enable_cache(directory: str) -> str | None:
    """Points jax's persistent compilation cache at ``directory`` (local or ``gs://``; '' turns
    it off). Every executable is cached, however quick its compile: the point is that a restart
    compiles nothing. jax's own ``JAX_COMPILATION_CACHE_DIR``, when set, wins (and keeps jax's
    settings). Returns the directory in use or None."""
    if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
        logging.info('persistent compilation cache: %s (JAX_COMPILATION_CACHE_DIR)',
                     os.environ['JAX_COMPILATION_CACHE_DIR'])
        return os.environ['JAX_COMPILATION_CACHE_DIR']
    if not directory:
        logging.info('persistent compilation cache off')
        return None
    resolved = os.fspath(paths.resolve(directory))
    jax.config.update('jax_compilation_cache_dir', resolved)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    logging.info('persistent compilation cache: %s', resolved)
    return resolved


def compile_logged(jitted, *args, name: str):
    """``jitted`` lowered and compiled for ``args``, with a log line before and after (the
    seconds taken include loading from the persistent cache). Returns the compiled executable,
    called like ``jitted``."""
    logging.info('compiling %s ...', name)
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    logging.info('compiled %s in %.1f s', name, time.perf_counter() - start)
    return compiled
