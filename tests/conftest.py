"""Session fixtures: the shipped pipeline and tiny random-weight SD 1.x / 2.x / XL pipelines, built once."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(int(os.environ.get("SAEURON_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def minicanvas_pipe():
    from saeuron.pipelines import load_pipeline

    return load_pipeline()


@pytest.fixture(scope="session")
def random_minicanvas_pipe():
    """A random-weight minicanvas pipeline (seeded): fast tests that need no trained weights."""
    from saeuron.minicanvas.model import build_scheduler, build_text_encoder, build_tokenizer, build_unet
    from saeuron.pipelines import MiniCanvasPipeline

    torch.manual_seed(0)
    tok = build_tokenizer()
    pipe = MiniCanvasPipeline(unet=build_unet(), scheduler=build_scheduler(), text_encoder=build_text_encoder(len(tok.get_vocab())),
                              tokenizer=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_sd2_pipeline

    return tiny_sd2_pipeline(tmp_path_factory.mktemp("tiny_sd2"))


@pytest.fixture(scope="session")
def tiny_sdxl_no_zeros_dir(tmp_path_factory) -> Path:
    """Tiny SDXL with force_zeros_for_empty_prompt off: the unconditional half is the encoded empty prompt."""
    from tiny_models import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl_no_zeros"), force_zeros_for_empty_prompt=False)


TINY_HOOKPOINT = "up_blocks.1.attentions.2"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, minicanvas_pipe) -> Path:
    """A small run directory: cache (3 styles x 2 objects, 2 seeds, 4 steps), one SAE, its concept scores."""
    from saeuron.cache import CacheConfig, cache_activations
    from saeuron.concepts import score_cache
    from saeuron.minicanvas.world import all_prompts
    from saeuron.sae import load_sae
    from saeuron.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    prompts = [r for r in all_prompts() if r["style"] in ("neon", "ocean", "lava") and r["object"] in ("star", "ring")]
    cache_activations(minicanvas_pipe, prompts, run / "cache.h5",
                      CacheConfig(hookpoints=(TINY_HOOKPOINT,), seeds=(0, 1), steps=4, batch_size=6), progress=False)
    sae_dir = run / "saes" / TINY_HOOKPOINT
    train(TrainConfig(out=str(sae_dir), hookpoint=TINY_HOOKPOINT, cache=str(run / "cache.h5"), tokens=60_000, lr=4e-3,
                      batch_size=512, expansion=4, n_checkpoints=0, defaults="saeuron"))
    sae = load_sae(sae_dir, hookpoint=TINY_HOOKPOINT).eval()
    score_cache(run / "cache.h5", TINY_HOOKPOINT, sae).save(sae_dir / "concepts.h5")
    return run
