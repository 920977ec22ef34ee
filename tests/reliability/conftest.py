"""The evaluator tests' session fixtures (a tiny run config over the synthetic scenes, random
parameters), shared so the broken-model tests build nothing twice."""

from tests.evaluators.conftest import eval_config, random_arrays, tfds_dir  # noqa: F401
