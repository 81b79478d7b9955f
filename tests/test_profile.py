"""scripts/profile_step.py: its CPU smoke run writes the JSON the GPU run will, and the kernel rule table sorts
real CUDA kernel names as intended."""
from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest

from conftest import ROOT, SHARED_GLUE

_spec = importlib.util.spec_from_file_location("profile_step", ROOT / "scripts" / "profile_step.py")
prof = importlib.util.module_from_spec(_spec)
sys.modules["profile_step"] = prof
_spec.loader.exec_module(prof)


@pytest.mark.parametrize("kernel, expected", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4, false, false, cutlass::bfloat16_t>>",
     "softmax/attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80(PyTorchMemEffAttention::AttentionBackwardKernel<...>::Params)",
     "softmax/attention"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, at::native::(anonymous "
     "namespace)::LogSoftMaxForwardEpilogue>(float*, float const*, int)", "softmax/attention"),
    ("nvjet_tst_128x64_64x8_2x1_v_bz_TNT", "matmul/gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
     "matmul/gemm"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>(...)", "matmul/gemm"),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, false>(...)",
     "layer norm"),
    ("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel<c10::BFloat16, float>(...)", "layer norm"),
    ("void at::native::(anonymous namespace)::fused_dropout_kernel_vec<float, float, unsigned int, 1, 4, bool>(...)",
     "dropout/rand"),
    ("void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_kernel<float, 4, ...>(...)",
     "dropout/rand"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
     "at::native::GeluType)::{lambda()#2}::operator()() const, std::array<char*, 2ul> >(...)", "gelu/activation"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
     "(at::native::ADAM_MODE)1, false>, ...>(...)", "optimizer/foreach (AdamW, zero grads, clip scale)"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor<float, (at::native::NormType)1>>(...)",
     "reductions/norms (DEM, importance, clip norm)"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::WelfordOps<float, float, int, "
     "thrust::pair<float, float> >, unsigned int, float, 2, 4> >(...)", "reductions/norms (DEM, importance, clip norm)"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::bfloat16_copy_kernel_cuda(at::TensorIteratorBase&)"
     "::{lambda(float)#1}, std::array<char*, 2ul> >(...)", "casts/copies"),
    ("void at::native::unrolled_elementwise_kernel<at::native::binary_internal::MulFunctor<float>, std::array<char*, "
     "3ul>, 4, TrivialOffsetCalculator<2, unsigned int>, TrivialOffsetCalculator<1, unsigned int>, "
     "at::native::memory::LoadWithoutCast, at::native::memory::StoreWithoutCast>(...)", "elementwise (other)"),
    ("Memcpy HtoD (Pinned -> Device)", "memcpy/memset"),
    ("aten::native_layer_norm", "layer norm"),
    ("aten::addmm", "matmul/gemm"),
    ("something_new_kernel", "other"),
])
def test_kernel_categories(kernel, expected):
    assert prof.category(kernel) == expected


def test_busy_is_the_union_of_intervals_in_the_window():
    events = [("a", 0.0, 10.0), ("b", 5.0, 10.0), ("c", 30.0, 5.0), ("d", 90.0, 20.0)]
    assert prof.busy_us(events, 0.0, 100.0) == 15 + 5 + 10  # [0, 15], [30, 35], [90, 100]


def _numbers(obj, path=""):
    """Every number in a JSON tree, with where it is."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.slow
def test_smoke_run_writes_every_part(tmp_path, capsys):
    out = tmp_path / "profile.json"
    prof.main(["--smoke", "--out", str(out), "--data", str(SHARED_GLUE)])
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu" and report["mode"] == "eager-fp32"
    assert report["versions"]["torch"] and report["date"] and "--smoke" in report["command"]

    profiles = report["step_profile"]
    methods = ["lora", "dora", "dora@end", "adalora"]
    assert [(r["method"], r["runs"]) for r in profiles] == [(m, k) for k in (1, 2) for m in methods]  # k stacked
    for r in profiles:
        assert "error" not in r, r
        for key in ("wall_ms_per_step", "kernel_ms_per_step", "gpu_busy_fraction", "device_idle_share",
                    "flops_per_step_counted", "flops_per_step_analytic", "tflops_counted", "samples_per_s"):
            assert r[key] > 0 or key == "device_idle_share", (r["method"], key)
        assert r["device_events"] > 0 and 0 <= r["device_idle_share"] <= 1
        assert math.isclose(sum(c["share"] for c in r["categories"].values()), 1.0, rel_tol=1e-6)
        assert 0 < len(r["top_kernels"]) <= prof.TOP
        assert r["categories"]["matmul/gemm"]["ms_per_step"] > 0

    scaling = report["batch_scaling"]
    assert [(r["method"], r["batch"]) for r in scaling] == [("lora", 4), ("lora", 8), ("dora", 4), ("dora", 8)]
    assert all("error" not in r and r["steady_samples_per_s"] > 0 for r in scaling)

    real = report["real_run"]
    assert "error" not in real, real
    assert real["model"] == "tiny" and real["method"] == "dora" and not real["fast_path"]
    assert real["steps"] == 3 and real["epochs_run"] == 1  # 48 examples, batch 16
    assert real["eval_s"] > 0 and real["checkpoint_s"] > 0
    assert real["ms_per_step_amortised"] >= real["train_ms_per_step"] > 0
    assert real["profile"]["profiled_steps"] >= 1 and 0 <= real["profile"]["device_idle_share"] <= 1

    stacking = report["stacking"]
    assert [(r["method"], r["seeds_stacked"], r["batch"]) for r in stacking] == [  # batch: each run's
        ("lora", 1, 4), ("lora", 2, 4), ("dora", 1, 4), ("dora", 2, 4)]
    for r in stacking:
        assert r["length"] == "cola" and math.isclose(r["ms_per_seed_step"], r["wall_ms_per_step"] / r["seeds_stacked"])

    negative = [(where, v) for where, v in _numbers(report) if v < 0 or not math.isfinite(v)]
    assert not negative
    printed = capsys.readouterr().out
    assert "(a) L=128" in printed and "(b)" in printed and "(c) real run" in printed and "(d) runs stacked" in printed


def test_real_length_profile_counts_only_real_tokens(tmp_path):
    """(a) at a task's recorded lengths: the packed and the padded step of the same drawn batches carry the same real
    tokens and the same analytic (real-token) FLOPs, while the op-counted FLOPs of the padded step include its
    padding."""
    rows = {}
    for layout in ("padded", "packed"):
        out = tmp_path / f"{layout}.json"
        prof.main(["--smoke", "--parts", "a", "--methods", "lora", "--setting", "sst2", "--layout", layout,
                   "--out", str(out)])
        [rows[layout]] = [r for r in json.loads(out.read_text())["step_profile"] if r["runs"] == 2]
    padded, packed = rows["padded"], rows["packed"]
    for r, layout in ((padded, "padded"), (packed, "packed")):
        assert "error" not in r, r
        assert r["layout"] == layout and r["length"] == "sst2" and r["batch"] == 64  # SST-2's batch (Table 8)
    assert packed["real_tokens_per_step"] == padded["real_tokens_per_step"] > 0
    assert math.isclose(packed["flops_per_step_analytic"], padded["flops_per_step_analytic"])
    assert packed["flops_per_step_counted"] < padded["flops_per_step_counted"]


@pytest.mark.slow
def test_xsum_profile_counts_real_tokens_of_both_sides(tmp_path):
    """(a) --setting xsum: BART on XSum's length model, packed and padded steps of the same length draws carry the
    same real tokens (source + summary) and analytic FLOPs; the padded step's counted FLOPs include its padding."""
    rows = {}
    for layout in ("padded", "packed"):
        out = tmp_path / f"{layout}.json"
        prof.main(["--smoke", "--parts", "a", "--methods", "dora", "--setting", "xsum", "--layout", layout,
                   "--profile-runs", "2", "--out", str(out)])
        [rows[layout]] = [r for r in json.loads(out.read_text())["step_profile"] if r["runs"] == 2]
    padded, packed = rows["padded"], rows["packed"]
    assert "error" not in padded and "error" not in packed and packed["batch"] == 16  # DoRA's XSum batch
    assert packed["real_tokens_per_step"] == padded["real_tokens_per_step"] > 0
    assert packed["computed_tokens_per_step"] < padded["computed_tokens_per_step"]
    assert math.isclose(packed["flops_per_step_analytic"], padded["flops_per_step_analytic"])
    assert packed["flops_per_step_counted"] < padded["flops_per_step_counted"]


def test_bart_analytic_flops_by_hand():
    from types import SimpleNamespace

    c = SimpleNamespace(d_model=2, encoder_ffn_dim=3, vocab_size=5, encoder_layers=1, decoder_layers=1)
    # encoder linears (4*4 + 2*6) * 3 tokens = 84; decoder (6*4 + 2*6) * 2 = 72; cross k/v 2*4 * 3 = 24; head 10 * 2
    linear = 2 * (84 + 72 + 24 + 20)
    attention = 4 * 2 * (3 * 3 + 2 * 2 / 2 + 2 * 3)
    assert prof.analytic_flops_bart(c, [3], [2]) == linear * 2 + attention * 3
    assert prof.analytic_flops_bart(c, [3], [2], frozen=False) == linear * 3 + attention * 3
