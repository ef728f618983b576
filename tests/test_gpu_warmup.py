"""training/gpu_warmup.py: the thread that starts cuBLAS and cuDNN's attention while the model loads
reports what it did or why it could not (never failing the run); on a GPU, it does start cuDNN's band
where training attention takes it."""

from __future__ import annotations

import pytest
import torch

from swaa_patch.training import gpu_warmup


def test_the_thread_reports_what_it_started_or_why_not(monkeypatch):
    calls = []

    def fake(head_dim, dtype, device, attention):
        calls.append((head_dim, dtype, device.type, attention))
        return ["cuBLAS", "cuDNN attention"]

    monkeypatch.setattr(gpu_warmup, "warm_libraries", fake)
    text = gpu_warmup.start(64, torch.bfloat16, torch.device("cpu"), True).join()
    assert text.startswith("cuBLAS and cuDNN attention started in ") and text.endswith(
        "while the model loaded"
    )
    assert calls == [(64, torch.bfloat16, "cpu", True)]

    def broken(*args):
        raise RuntimeError("no cuDNN here")

    monkeypatch.setattr(gpu_warmup, "warm_libraries", broken)
    text = gpu_warmup.start(64, torch.bfloat16, torch.device("cpu"), True).join()
    assert text == "GPU libraries not started ahead (RuntimeError: no cuDNN here); the first step starts them"


@pytest.mark.gpu
def test_on_hopper_it_starts_cudnns_band_and_cublas():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from swaa_patch.backends import cudnn_swa

    device = torch.device("cuda")
    expected = ["cuBLAS"]
    if torch.cuda.get_device_capability()[0] == 9 and cudnn_swa.frontend_available():
        expected.append("cuDNN attention")
    assert gpu_warmup.warm_libraries(128, torch.bfloat16, device, attention=True) == expected
    assert gpu_warmup.warm_libraries(128, torch.bfloat16, device, attention=False) == ["cuBLAS"]
