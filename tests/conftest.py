"""Test setup: 8 simulated CPU devices (must be set before jax is imported) and fast defaults."""

import os
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the test processes (xdist workers and the programs they
# start); programs honour it over their config's train.compilation_cache_dir.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'xfm_jax_test_jax_cache_{os.getuid()}'))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `configs` is a top-level folder, not an installed package

pytest_plugins = ['tests.gcs']  # gcs_bucket, gcs_dir: a local GCS emulator for gs:// tests
