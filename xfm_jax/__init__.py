"""X-FM and X²-VLM in JAX. ``xfm_jax.load(path)`` (``xfm_jax.api``) opens a trained model; it is
imported on first use, so ``import xfm_jax`` stays light."""


def __getattr__(name):
    if name in ('load', 'Model'):
        from xfm_jax import api
        return getattr(api, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
