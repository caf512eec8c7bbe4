import pytest
import torch

# One intra-op thread: the test models are tiny, and on a small (often shared) CI machine
# several OpenMP workers spin against each other (measured: 1 thread ~10x faster than 2 there).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
