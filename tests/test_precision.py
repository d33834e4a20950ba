"""Mixed precision by default (issue 17): which precision ``amp`` picks and why, and which parts of the
networks stay in fp32 under autocast (the encoders compute in bf16, positions / LayerNorm / aggregation /
fusion / head in fp32)."""

from __future__ import annotations

import pytest
import torch

from mri_slice_transfer.engine import precision
from mri_slice_transfer.engine.precision import choose_precision, cpu_autocast_enabled, cuda_amp_enabled
from mri_slice_transfer.engine.run_info import log_run_info
from mri_slice_transfer.networks.conv3d import Conv3DNet
from mri_slice_transfer.networks.planes import MultiPlaneNet
from mri_slice_transfer.networks.slice_set import SliceSetNet

SIZE = (12, 14, 12)


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, native) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    p = choose_precision("auto", "cpu")
    assert p.mixed is native and p.dtype == (torch.bfloat16 if native else None)
    assert ("natively" if native else "no native bf16") in p.reason
    assert cpu_autocast_enabled("auto", "cpu") is native and not cuda_amp_enabled("auto", "cpu")
    # explicit choices win over the hardware check
    assert choose_precision("true", "cpu").mixed and choose_precision(True, "cpu").dtype == torch.bfloat16
    assert not choose_precision("false", "cpu").mixed and choose_precision(False, "cpu").reason == "amp false"


def test_auto_on_cuda_is_monai_fp16_amp_and_other_devices_stay_fp32() -> None:
    p = choose_precision("auto", "cuda")
    assert p.mixed and p.dtype == torch.float16 and "GradScaler" in p.label
    assert cuda_amp_enabled("AUTO", "cuda:1") and not cpu_autocast_enabled("auto", "cuda")
    assert not choose_precision(True, "mps").mixed


def test_a_bad_amp_value_names_the_choices_and_the_value() -> None:
    with pytest.raises(ValueError, match="amp must be auto, true or false, not 'fast'"):
        choose_precision("fast", "cpu")


def test_the_run_log_says_which_precision_and_why(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    text = log_run_info("cpu", "auto")
    assert "precision: fp32 (amp auto: this CPU has no native bf16" in text


def _dtypes_seen(net: torch.nn.Module, names: tuple[str, ...]) -> dict[str, set[torch.dtype]]:
    seen: dict[str, set[torch.dtype]] = {n: set() for n in names}
    for name in names:
        module = net.get_submodule(name)

        def hook(mod, args, out, name=name):
            tensors = [a for a in args if torch.is_tensor(a)] + [out]
            seen[name].update(t.dtype for t in tensors if t.is_floating_point())

        module.register_forward_hook(hook)
    return seen


@pytest.mark.parametrize("aggregation", ["mean", "attention", "transformer"])
def test_under_autocast_only_the_slice_encoder_computes_in_bf16(aggregation) -> None:
    torch.manual_seed(0)
    net = SliceSetNet(
        encoder="cnn5", spatial_size=SIZE, aggregation=aggregation, position_encoding="learned"
    ).eval()
    seen = _dtypes_seen(net, ("encoder", "pre_embed", "position", "aggregate", "head"))
    x = torch.randn(2, 1, *SIZE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert torch.bfloat16 in seen["encoder"]
    for part in ("pre_embed", "position", "aggregate", "head"):
        assert seen[part] == {torch.float32}, part
    assert out.dtype == torch.float32
    # the fp32 parts are exact: the head on the autocast run's pooled embedding equals the fp32 head
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = net.pooled_embedding(x)
    assert torch.equal(net.head(pooled), out)


def test_three_planes_fuse_and_predict_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    net = MultiPlaneNet(
        encoder="cnn5", spatial_size=SIZE, axis=["axial", "coronal"], plane_fusion="attention"
    )
    seen = _dtypes_seen(net, ("fusion", "head"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, *SIZE))
    assert (
        seen["fusion"] == {torch.float32} and seen["head"] == {torch.float32} and out.dtype == torch.float32
    )


def test_the_3d_cnn_pools_and_classifies_in_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    net = Conv3DNet(num_outputs=1, channels=(4, 8, 8, 8, 8))
    seen = _dtypes_seen(net, ("blocks", "classifier"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 32, 32, 32))
    assert torch.bfloat16 in seen["blocks"] and seen["classifier"] == {torch.float32}
    assert out.dtype == torch.float32


def test_cnn5_blocks_stay_channels_last_after_instance_norm_and_compute_the_same_values() -> None:
    """InstanceNorm returns NCHW: the block puts a channels-last activation back (pooling and the next conv
    on NCHW were most of a bf16 cnn5 step); values are those of the contiguous network."""
    from mri_slice_transfer.engine.network import build_network

    def build(channels_last: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        opts = dict(encoder="cnn5", spatial_size=SIZE, pretrained=False, num_outputs=1)
        return build_network(channels_last=channels_last, **opts).eval()

    fast, plain = build(True), build(False)
    layouts = []
    for m in fast.encoder.modules():
        if type(m).__name__ == "ConvNormPoolBlock":
            m.register_forward_hook(
                lambda mod, a, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last))
            )
    x = torch.randn(2, 1, *SIZE)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-6)
    assert layouts and all(layouts)


@pytest.mark.parametrize("bundle", ["adni_ad", "ukbb_brain_age"])
def test_bundles_pin_memory_and_copy_without_blocking_only_on_cuda(bundle) -> None:
    import json
    from pathlib import Path

    from mri_slice_transfer.engine import pin_memory_for

    assert pin_memory_for("cuda:1") and not pin_memory_for("cpu") and not pin_memory_for(torch.device("cpu"))
    configs = Path(__file__).resolve().parents[1] / "bundles" / bundle / "configs"
    train = json.loads((configs / "train.json").read_text())
    infer = json.loads((configs / "inference.json").read_text())
    for cfg in (train, infer):
        assert cfg["pin_memory"] == {
            "_target_": "mri_slice_transfer.engine.pin_memory_for",
            "device": "@device",
        }
        assert cfg["amp"] == "auto"
    loaders = [train["train"]["dataloader"], train["validate"]["dataloader"], infer["dataloader"]]
    engines = [train["train"]["trainer"], train["validate"]["evaluator"], infer["evaluator"]]
    assert all(d["pin_memory"] == "@pin_memory" for d in loaders)
    assert all(e["non_blocking"] == "@pin_memory" for e in engines)
