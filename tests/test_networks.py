"""Slice-set networks, the 3D-CNN baseline and the model factory (CPU, CI-sized)."""

from __future__ import annotations

import itertools

import pytest
import torch

from mri_slice_transfer.networks import (
    AGGREGATIONS,
    AXES,
    MODEL_NAMES,
    POSITION_ENCODINGS,
    CNN5Encoder,
    Conv3DNet,
    LearnedPositionEncoding,
    SinusoidalPositionEncoding,
    SliceSetNet,
    build_model,
    convert_in_channels_mode,
    count_parameters,
    num_slices,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: thread start-up/spinning costs more than it saves (and much more on a
    busy 2-core CI runner), so run this module single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TINY = (32, 36, 32)
# Smaller still, with a different size per axis, for the long lists of combinations (fast on 2 cores).
MINI = (12, 16, 10)
SMALL = (16, 20, 16)
FULL = (91, 109, 91)


def _finite_grads(model: torch.nn.Module) -> None:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameters got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)


def _run(model: torch.nn.Module, spatial=TINY, batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, 1, *spatial)
    y = model(x)
    y.sum().backward()
    return y


COMBOS = list(itertools.product(AGGREGATIONS, POSITION_ENCODINGS, AXES))


@pytest.mark.parametrize("encoder", ["cnn5", "resnet18"])
@pytest.mark.parametrize("aggregation,position_encoding,axis", COMBOS)
def test_all_combinations_forward_backward(encoder, aggregation, position_encoding, axis):
    torch.manual_seed(0)
    model = build_model(encoder, axis, aggregation, position_encoding, spatial_size=MINI, num_outputs=2)
    y = _run(model, spatial=MINI)
    assert y.shape == (2, 2)
    assert torch.isfinite(y).all()
    _finite_grads(model)
    assert model.num_slices == MINI[AXES[axis]]
    assert model.encoder_init == "scratch"


@pytest.mark.parametrize(
    "encoder,aggregation,position_encoding,axis",
    [
        ("resnet34", "mean", "learned", "sagittal"),
        ("resnet34", "attention", "sinusoidal", "axial"),
        ("resnet50", "max", "none", "coronal"),
        ("resnet50", "attention", "learned", "axial"),
    ],
)
def test_bigger_resnets_forward_backward(encoder, aggregation, position_encoding, axis):
    torch.manual_seed(0)
    model = build_model(encoder, axis, aggregation, position_encoding, spatial_size=MINI)
    y = _run(model, spatial=MINI)
    assert y.shape == (2, 1)
    _finite_grads(model)


# architecture.md table (reference = 3-channel conv1, i.e. in_channels_mode="repeat"); sagittal PE.
PARAM_TABLE = [
    ("cnn5", "mean", "none", 998_625),
    ("cnn5", "mean", "learned", 1_016_097),
    ("cnn5", "attention", "none", 1_001_889),
    ("cnn5", "attention", "learned", 1_019_361),
    ("resnet18", "mean", "none", 11_195_105),
    ("resnet18", "mean", "learned", 11_203_841),
    ("resnet50", "mean", "none", 23_575_777),
    ("resnet50", "mean", "learned", 23_584_513),
]


@pytest.mark.parametrize("encoder,aggregation,position_encoding,expected", PARAM_TABLE)
def test_parameter_counts_match_reference(encoder, aggregation, position_encoding, expected):
    args = (encoder, "sagittal", aggregation, position_encoding)
    with torch.device("meta"):  # shapes only: no memory, no (slow) random initialisation
        repeat = build_model(*args, spatial_size=FULL, in_channels_mode="repeat")
        fold = build_model(*args, spatial_size=FULL, in_channels_mode="fold")
    assert count_parameters(repeat) == expected  # exact with the reference's 3-channel conv1
    if encoder != "cnn5":
        # The folded conv1 has 64 * 7 * 7 * 2 = 6,272 weights fewer: well within 2 %.
        assert count_parameters(fold) == expected - 6_272
        assert abs(count_parameters(fold) - expected) / expected < 0.02


def test_conv3d_parameters_forward_backward():
    with torch.device("meta"):
        assert count_parameters(build_model("conv3d")) == 2_948_801
        assert count_parameters(build_model("3dcnn", axis="ignored-for-conv3d")) == 2_948_801
    torch.manual_seed(0)
    model = Conv3DNet(output_bias=3.0)
    assert model.encoder_init == "scratch"
    assert torch.all(model.classifier.bias == 3.0)
    y = _run(model)
    assert y.shape == (2, 1)
    _finite_grads(model)


def test_factory_pretrained_rules():
    assert build_model("conv3d", pretrained="auto").encoder_init == "scratch"
    assert build_model("cnn5", pretrained="auto", spatial_size=TINY).encoder_init == "scratch"
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("conv3d", pretrained=True)
    with pytest.raises(ValueError, match="cnn5 has no pretrained weights"):
        build_model("cnn5", pretrained=True, spatial_size=TINY)


def test_bad_arguments_list_choices():
    with pytest.raises(ValueError, match="resnet18"):  # vgg16 is a valid (torchvision) encoder now
        build_model("vgg17")
    with pytest.raises(ValueError, match="sagittal, coronal, axial"):
        SliceSetNet("cnn5", axis="transverse", spatial_size=TINY)
    with pytest.raises(ValueError, match="mean, max, attention"):
        SliceSetNet("cnn5", aggregation="sum", spatial_size=TINY)
    with pytest.raises(ValueError, match="none, learned, sinusoidal"):
        SliceSetNet("cnn5", position_encoding="rope", spatial_size=TINY)
    with pytest.raises(ValueError, match="fold, repeat"):
        SliceSetNet("resnet18", in_channels_mode="rgb", spatial_size=TINY)
    with pytest.raises(ValueError, match="slice_chunk_size"):
        SliceSetNet("cnn5", spatial_size=TINY, slice_chunk_size=0)
    with pytest.raises(ValueError, match="pretrained"):
        SliceSetNet("resnet18", spatial_size=TINY, pretrained=None)


@pytest.mark.parametrize("encoder", ["cnn5", "resnet18"])
def test_small_test_volume(encoder):
    torch.manual_seed(0)
    model = SliceSetNet(encoder, axis="axial", spatial_size=TINY)
    assert _run(model, batch=1).shape == (1, 1)
    _finite_grads(model)


def test_output_bias_and_spatial_size_checks():
    model = SliceSetNet("cnn5", spatial_size=TINY, output_bias=62.68)
    assert torch.allclose(model.head[-1].bias, torch.tensor([62.68]))
    with pytest.raises(ValueError, match="spatial_size"):
        model(torch.randn(1, 1, 32, 36, 30))


@pytest.mark.parametrize("axis", list(AXES))
def test_number_of_slices_comes_from_spatial_size(axis):
    size = (20, 24, 28)
    k = size[AXES[axis]]
    assert num_slices(size, axis) == k
    model = SliceSetNet("cnn5", axis=axis, position_encoding="learned", spatial_size=size)
    assert model.num_slices == k
    assert model.position.p.shape == (k, 64)
    model.eval()
    emb = model.embed(torch.randn(3, 1, *size))
    assert emb.shape == (3, k, 32)
    with torch.device("meta"):
        full = SliceSetNet("resnet18", axis=axis, position_encoding="learned", spatial_size=FULL)
    assert full.position.p.shape == (FULL[AXES[axis]], 32)


def test_slices_cut_the_right_planes():
    model = SliceSetNet("cnn5", axis="sagittal", spatial_size=(5, 6, 7))
    x = torch.arange(2 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 1, 5, 6, 7)
    s = model.slices(x)
    assert s.shape == (10, 1, 6, 7)
    assert torch.equal(s[5 + 3, 0], x[1, 0, 3])  # volume-major, slice k of volume b at b*K + k
    model.axis = "coronal"
    assert torch.equal(model.slices(x)[2, 0], x[0, 0, :, 2, :])
    model.axis = "axial"
    assert torch.equal(model.slices(x)[7 + 4, 0], x[1, 0, :, :, 4])


def test_cnn5_pooling_matches_reference_at_full_size():
    # Reference: 3x2 (sagittal), 2x2 (coronal), 2x3 (axial) left of a slice after the five blocks.
    enc = CNN5Encoder().eval()
    with torch.no_grad():
        for (h, w), left in [((109, 91), (3, 2)), ((91, 91), (2, 2)), ((91, 109), (2, 3))]:
            assert enc.blocks(torch.zeros(1, 1, h, w)).shape[-2:] == left


@pytest.mark.parametrize("encoder", ["cnn5", "resnet18"])
@pytest.mark.parametrize("aggregation", list(AGGREGATIONS))
def test_no_position_encoding_is_permutation_invariant(encoder, aggregation):
    torch.manual_seed(0)
    model = SliceSetNet(encoder, axis="axial", aggregation=aggregation, spatial_size=SMALL).eval()
    x = torch.randn(2, 1, *SMALL)
    with torch.no_grad():
        y, y_flip = model(x), model(x.flip(-1))
        perm = torch.randperm(SMALL[2])
        y_perm = model(x[..., perm])
    torch.testing.assert_close(y_flip, y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_perm, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "position_encoding,aggregation",
    [("learned", "mean"), ("learned", "attention"), ("sinusoidal", "max"), ("sinusoidal", "attention")],
)
def test_position_encoding_makes_model_order_sensitive(position_encoding, aggregation):
    torch.manual_seed(0)
    model = SliceSetNet("cnn5", "sagittal", aggregation, position_encoding, spatial_size=SMALL).eval()
    if position_encoding == "learned":
        with torch.no_grad():  # as after training: per-position LayerNorm weights no longer all 1
            model.position.norm.weight.normal_(1.0, 0.5)
    x = torch.randn(2, 1, *SMALL)
    with torch.no_grad():
        y, y_flip = model(x), model(x.flip(2))
    assert (y - y_flip).abs().max() > 1e-5  # float round-off is ~1e-7


def test_sinusoidal_with_mean_is_still_permutation_invariant(caplog):
    # A fixed additive table followed by linear maps and a mean only shifts the output by a constant.
    torch.manual_seed(0)
    with caplog.at_level("WARNING"):
        model = SliceSetNet("cnn5", "sagittal", "mean", "sinusoidal", spatial_size=SMALL).eval()
    assert "no slice-position information" in caplog.text
    x = torch.randn(2, 1, *SMALL)
    with torch.no_grad():
        torch.testing.assert_close(model(x.flip(2)), model(x), rtol=1e-4, atol=1e-5)


def test_position_encoding_modules():
    pe = LearnedPositionEncoding(91, 64)
    assert sum(p.numel() for p in pe.parameters()) == 17_472
    assert abs(pe.p.std().item() - 91**-0.5) < 0.02
    sin = SinusoidalPositionEncoding(10, 8)
    assert sum(p.numel() for p in sin.parameters()) == 0
    assert "table" not in sin.state_dict()
    assert torch.allclose(sin.table[0], torch.tensor([0.0, 1.0] * 4))
    assert torch.allclose(sin.table[3, 0], torch.sin(torch.tensor(3.0)))


@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float32, 1e-5, 1e-6), (torch.float64, 1e-12, 1e-13)])
def test_fold_equals_repeat(dtype, rtol, atol):
    torch.manual_seed(0)
    kwargs = dict(axis="coronal", aggregation="attention", position_encoding="learned", spatial_size=SMALL)
    repeat = SliceSetNet("resnet18", in_channels_mode="repeat", **kwargs).to(dtype).eval()
    fold = SliceSetNet("resnet18", in_channels_mode="fold", **kwargs).to(dtype).eval()
    # Convert in the working precision (summing fp32 kernels would cost ~1e-8 relative in float64).
    fold.load_state_dict(convert_in_channels_mode(repeat.state_dict(), "fold"))
    assert fold.encoder.backbone.conv1.weight.shape[1] == 1
    x = torch.randn(2, 1, *SMALL, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fold(x), repeat(x), rtol=rtol, atol=atol)
    # ... and back: fold -> repeat state dicts load and agree as well.
    back = SliceSetNet("resnet18", in_channels_mode="repeat", **kwargs).to(dtype).eval()
    back.load_state_dict(convert_in_channels_mode(fold.state_dict(), "repeat"))
    with torch.no_grad():
        torch.testing.assert_close(back(x), repeat(x), rtol=rtol, atol=atol)


def test_fold_and_repeat_scratch_models_are_the_same_function():
    kwargs = dict(spatial_size=(16, 20, 16))
    torch.manual_seed(1)
    repeat = SliceSetNet("resnet18", in_channels_mode="repeat", **kwargs).eval()
    torch.manual_seed(1)
    fold = SliceSetNet("resnet18", in_channels_mode="fold", **kwargs).eval()
    x = torch.randn(2, 1, 16, 20, 16)
    with torch.no_grad():
        torch.testing.assert_close(fold(x), repeat(x), rtol=1e-5, atol=1e-6)


def _outputs_and_grads(model: torch.nn.Module, x: torch.Tensor, seed: int = 0):
    model.zero_grad()
    torch.manual_seed(seed)  # same dropout masks for chunked and unchunked runs
    y = model(x)
    (y**2).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("encoder,train", [("cnn5", True), ("resnet18", False)])
def test_chunked_equals_unchunked(encoder, train):
    torch.manual_seed(0)
    model = SliceSetNet(encoder, "sagittal", "attention", "learned", spatial_size=SMALL)
    model.train(train)
    x = torch.randn(2, 1, *SMALL)
    y_ref, g_ref = _outputs_and_grads(model, x)
    model.slice_chunk_size = 10  # 32 slices -> 4 chunks, the last one smaller
    y, g = _outputs_and_grads(model, x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)
    if not train:  # without gradients the chunks are encoded without checkpointing
        with torch.no_grad():
            torch.testing.assert_close(model(x), y_ref, rtol=1e-5, atol=1e-6)


def test_chunked_recompute_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = SliceSetNet("resnet18", spatial_size=(16, 20, 16), slice_chunk_size=8).train()
    bn = model.encoder.backbone.bn1
    x = torch.randn(2, 1, 16, 20, 16)
    y = model(x)
    after_forward = (bn.running_mean.clone(), bn.num_batches_tracked.clone())
    y.sum().backward()  # recomputes the encoder forward of each chunk
    assert torch.equal(bn.running_mean, after_forward[0])
    assert torch.equal(bn.num_batches_tracked, after_forward[1])
    assert int(bn.num_batches_tracked) == 4  # 32 slices in chunks of 8: one update per chunk


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_max_pooling_stays_in_bf16_under_cpu_autocast(spatial_dims):
    # autocast would run max_pool3d in fp32 (a copy of the 3D-CNN's largest activation); pooling only
    # selects values, so the bf16 result must equal the fp32 one exactly
    from mri_slice_transfer.networks.encoders import min_pool_max

    x = torch.randn(2, 3, *([8] * spatial_dims)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = min_pool_max(x, spatial_dims)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.float(), min_pool_max(x.float(), spatial_dims))


@pytest.mark.parametrize("task", ["adni_ad", "brain_age"])
@pytest.mark.parametrize("encoder", MODEL_NAMES)
def test_one_training_step_for_every_encoder_and_task(encoder, task):
    """Every encoder x task pair the bundles accept builds, gets its output bias and trains a step."""
    from mri_slice_transfer.data.datalist import TASKS
    from mri_slice_transfer.engine import build_network, make_loss, set_output_bias

    assert task in TASKS
    torch.manual_seed(0)
    model = build_network(encoder=encoder, axis="axial", pretrained=False, spatial_size=MINI)
    label = torch.tensor([[0.0], [1.0]]) if task == "adni_ad" else torch.tensor([[60.0], [70.0]])
    if task == "brain_age":  # as train.json: the output bias starts at the training mean age
        torch.nn.init.zeros_(model.output_layer.weight)
        set_output_bias(model, 65.0)
        with torch.no_grad():
            assert torch.equal(model(torch.randn(2, 1, *MINI)), torch.full((2, 1), 65.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    loss = make_loss(task)(model(torch.randn(2, 1, *MINI)), label)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_set_output_bias_needs_an_output_layer():
    from mri_slice_transfer.engine import set_output_bias

    with pytest.raises(ValueError, match="Conv3d.*output layer"):
        set_output_bias(torch.nn.Conv3d(1, 1, 1), 3.0)
