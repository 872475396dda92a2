"""Session fixtures: the shipped pipeline and tiny random-weight SD / SDXL pipelines, built once."""

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
def tiny_sd_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_sd_pipeline

    return tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    from tiny_models import tiny_sdxl_pipeline

    return tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny_sdxl"))
