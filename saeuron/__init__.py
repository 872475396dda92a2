"""saeuron: sparse autoencoders for interpretability and concept unlearning in diffusion models."""

from .errors import UserError
from .pipelines import SamplerConfig, load_pipeline, sample

__all__ = ["SamplerConfig", "UserError", "load_pipeline", "load_sae", "sample"]


def __getattr__(name):
    if name == "load_sae":  # imported lazily: sae-lens is slow to import
        from .sae import load_sae

        return load_sae
    raise AttributeError(f"module 'saeuron' has no attribute {name!r}")
