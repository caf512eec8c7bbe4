from pathlib import Path

import pytest
import torch

from m2det.checkpoint import save_model
from m2det.config import get_config
from m2det.model import build_model

#: Fixtures ``fake_trt`` and ``fake_gpu``: TensorRT and cuda-python stand-ins (fake_tensorrt.py).
pytest_plugins = ["fake_tensorrt"]

# One intra-op thread: the test models are tiny, and on a small (often shared) CI machine
# several OpenMP workers spin against each other (measured: 1 thread ~10x faster than 2 there).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised ``m2det_tiny`` checkpoint (seed 0) in the project format."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_model(build_model(get_config("m2det_tiny")), path)
    return path
