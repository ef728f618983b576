import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# the machine's 2 cores: one torch thread per pytest-xdist worker (the README's command runs two), both otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
# Without a GPU, the Triton kernel tests (test_triton_swa.py) run on Triton's CPU interpreter. The
# flag must be set before anything imports triton (`import swaa_patch` does, through torch's
# flex_attention): triton.jit reads it when decorating, triton's own library functions included.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# flex_attention without torch.compile warns on every call on CPU; the tests use it on purpose.
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


@pytest.fixture(autouse=True)
def _seed_and_hack():
    from swaa_patch import hack_hf_swaa

    hack_hf_swaa()
    torch.manual_seed(0)
    yield
