"""benchmarks/sft_profile.py on the tiny model on the CPU: the third training step is the one profiled
(two warm-up steps, three losses), and kernel names fall into the kinds the report sums."""

from __future__ import annotations

import os
import sys

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("the --tiny smoke run is for CPU machines", allow_module_level=True)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import sft_profile  # noqa: E402


def test_tiny_run_profiles_the_third_step(tmp_path):
    out = tmp_path / "profile.md"
    argv = ["--tiny", "--variant", "swaa", "--checkpoint-every", "2", "--work-dir", str(tmp_path / "work"),
            "--out", str(out)]  # fmt: skip
    assert sft_profile.main(argv) == 0
    text = out.read_text()
    assert "step 3 profiled after 2 warm-up step(s); losses " in text
    assert len(text.split("losses ")[1].splitlines()[0].split(" / ")) == 3
    assert ", checkpointing 1 in 2 layers; n = 96 tokens" in text
    assert "attention calls of all 3 steps by path" in text  # the flex row: SWAA_FUSED_TRAIN off
    wall = float(text.split("step wall ")[1].split(" ms")[0])
    assert wall > 0


@pytest.mark.parametrize("argv, message", [
    (["--profile-step", "1"], "--profile-step: must be >= 2"),
    (["--tiny", "--variant", "swaa_liger"], "--tiny: Liger's kernels, cuDNN's window and FA4 need a GPU"),
    (["--tiny", "--variant", "swaa_cudnn"], "--tiny: Liger's kernels, cuDNN's window and FA4 need a GPU"),
])
def test_bad_options_name_themselves(argv, message, capsys):
    with pytest.raises(SystemExit):
        sft_profile.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, kind", [  # kernel names of H200 profiles (decode_profile.md, the Triton kernels)
    ("nvjet_sm90_tst_128x8_64x12_4x1_v_bz_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "matmul"),
    ("swa_sink_bwd_dkdv", "attention"),
    ("sink_merge_fwd", "attention"),
    ("_rms_norm_forward_kernel", "Liger"),
    ("_swiglu_backward_kernel", "Liger"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "elementwise / copies"),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL", "communication"),
    ("triton_poi_fused_add_mul_0", "other"),
])
def test_kernel_kinds(name, kind):
    assert sft_profile.kind_of(name) == kind
