import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(2)
# flex_attention without torch.compile warns on every call on CPU; the tests use it on purpose.
warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


@pytest.fixture(autouse=True)
def _seed_and_hack():
    from swaa_patch import hack_hf_swaa

    hack_hf_swaa()
    torch.manual_seed(0)
    yield
