"""saeuron: sparse autoencoders for interpretability and concept unlearning in diffusion models."""

import importlib

from .errors import UserError

__all__ = ["SamplerConfig", "UserError", "load_pipeline", "load_sae", "sample"]

# imported on first use: the stage modules pull in torch, diffusers and sae-lens
_LAZY = {"SamplerConfig": "pipelines", "load_pipeline": "pipelines", "sample": "pipelines", "load_sae": "sae"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'saeuron' has no attribute {name!r}")
