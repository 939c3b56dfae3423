"""Tests of the attention U-Net backbone (``plugins/backbones/unet.py``)."""

from __future__ import annotations

import math
import time

import attrs
import pytest
import torch
import torch.nn.functional as F

from denoisekit.cli.plugins import option_doc
from denoisekit.host.recipe import structure_config
from denoisekit.host.registry import load_registry
from denoisekit.plugins.backbones import unet as unet_mod
from denoisekit.plugins.backbones.unet import UNet, UNetConfig
from denoisekit.plugins.backbones.unet_layers import (
    AttentionBlock,
    Dropout,
    SinusoidalEmbedding,
    channels_first_attention,
)
from denoisekit.testing import check_config_roundtrip


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread is faster than two on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**overrides) -> UNetConfig:
    """A small two-level U-Net for 8×8 images."""
    kw = dict(
        channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        image_size=8,
        groups=4,
        num_heads=2,
        dropout=0.0,
    )
    kw.update(overrides)
    return UNetConfig(**kw)


def perturbed(model: UNet, seed: int = 0, scale: float = 0.1) -> UNet:
    """Add noise to every parameter, so the zero-initialised layers are not zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


# --------------------------------------------------------------------------- size


def test_ddpm_cifar10_parameter_count():
    # Ho et al. 2020, appendix B: the CIFAR-10 model has 35.7M parameters.
    cfg = UNetConfig()
    assert (cfg.channels, cfg.channel_mults, cfg.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert (cfg.attention_resolutions, cfg.dropout, cfg.image_size) == ((16,), 0.1, 32)
    n = sum(p.numel() for p in UNet(cfg).parameters())
    print(f"DDPM CIFAR-10 U-Net: {n:,} parameters")
    assert abs(n - 35.7e6) <= 0.05 * 35.7e6


def test_scale_shift_adds_one_projection_width_per_res_block():
    # FiLM needs (scale, shift): each residual block's embedding projection doubles its
    # output, i.e. gains (emb_ch + 1) * c_out parameters.
    add, film = tiny(embedding="additive"), tiny(embedding="scale_shift")
    n_add = sum(p.numel() for p in UNet(add).parameters())
    n_film = sum(p.numel() for p in UNet(film).parameters())
    emb_ch = 4 * 8
    # Output widths of the residual blocks: encoder 8, 16; middle 16, 16;
    # decoder level 1: 16, 16; level 0: 8, 8.
    c_outs = [8, 16, 16, 16, 16, 16, 8, 8]
    assert n_film - n_add == sum((emb_ch + 1) * c for c in c_outs)


def test_attention_blocks_sit_at_the_configured_resolutions():
    cfg = UNetConfig()  # attention at 16×16: level 1 of 4
    n_attn = sum(isinstance(m, AttentionBlock) for m in UNet(cfg).modules())
    # encoder: num_res_blocks, middle: 1, decoder: num_res_blocks + 1
    assert n_attn == 2 + 1 + 3


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("size", "overrides", "out_ch"),
    [
        (8, dict(in_channels=1), 1),
        (8, dict(in_channels=3, out_channels=6, embedding="scale_shift"), 6),
        (8, dict(in_channels=2, num_classes=5, time_input="log_snr"), 2),
        (
            32,
            dict(image_size=32, channel_mults=(1, 2, 2), attention_resolutions=(16, 8)),
            3,
        ),
        (
            32,
            dict(
                image_size=32,
                channel_mults=(1, 1, 2, 2),
                attention_resolutions=(16,),
                embedding="scale_shift",
                time_input="log_snr",
                num_classes=10,
                head_channels=4,
                resample_with_conv=False,
            ),
            3,
        ),
        (
            64,
            dict(
                image_size=64,
                in_channels=4,
                out_channels=8,
                channel_mults=(1, 2, 2, 2),
                attention_resolutions=(16, 8),
                num_classes=3,
            ),
            8,
        ),
    ],
)
def test_output_shape(size, overrides, out_ch):
    model = UNet(tiny(**overrides)).eval()
    in_ch = model.config.in_channels
    x_t = torch.randn(2, in_ch, size, size)
    t = torch.tensor([0.0, 17.5]) if model.time_input == "timestep" else torch.tensor([-9.0, 4.2])
    cond = torch.tensor([0, -1]) if model.num_classes else None
    with torch.no_grad():
        out = model(x_t, t, cond)
    assert out.shape == (2, out_ch, size, size)
    assert out.dtype == x_t.dtype
    assert model.out_channels == out_ch


def test_module_exposes_time_input():
    assert UNet(tiny()).time_input == "timestep"
    assert UNet(tiny(time_input="log_snr")).time_input == "log_snr"


def test_output_starts_at_zero():
    # conv_out is zero-initialised (DDPM / improved-diffusion): the untrained net predicts 0.
    model = UNet(tiny(num_classes=2))
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([3.0, 400.0]), torch.tensor([1, -1]))
    assert torch.equal(out, torch.zeros_like(out))


def test_samples_in_a_batch_are_independent():
    # GroupNorm and attention act per sample: a reshape mixing the batch would break this.
    model = perturbed(UNet(tiny(num_classes=3, embedding="scale_shift")))
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([1.0, 250.5, 999.0])
    cond = torch.tensor([2, -1, 0])
    with torch.no_grad():
        whole = model(x_t, t, cond)
        parts = torch.cat([model(x_t[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-5)


def test_input_size_must_halve_cleanly():
    model = UNet(tiny(channel_mults=(1, 1, 2)))  # downsamples twice: sizes multiple of 4
    model(torch.randn(1, 3, 12, 8), torch.tensor([1.0]))  # non-square is fine
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 3, 8, 10), torch.tensor([1.0]))


def test_scalar_t_broadcasts_over_the_batch():
    model = perturbed(UNet(tiny()))
    x_t = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x_t, torch.tensor(7.0)), model(x_t, torch.full((2,), 7.0)))


# --------------------------------------------------------------------------- conditioning


def test_timestep_embedding_matches_ddpm_formula():
    # DDPM get_timestep_embedding, dim 8: half = 4, freq_i = 10000 ** (-i / 3).
    freqs = [1.0, 0.046415888336127786, 0.0021544346900318843, 1e-4]
    t = 3.5
    expected = [math.sin(t * f) for f in freqs] + [math.cos(t * f) for f in freqs]
    emb = SinusoidalEmbedding(8)(torch.tensor([t]))
    torch.testing.assert_close(emb[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)


def test_output_depends_on_t():
    model = perturbed(UNet(tiny()))
    x_t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = model(x_t, torch.tensor([10.0, 10.5]))
    assert not torch.allclose(out[0], out[1])


def test_log_snr_input_is_finite_at_infinite_snr():
    # A continuous schedule has lambda = +inf at t = 0 and -inf at t = 1.
    model = perturbed(UNet(tiny(time_input="log_snr")))
    with torch.no_grad():
        out = model(torch.randn(3, 3, 8, 8), torch.tensor([math.inf, -math.inf, 0.3]))
    assert torch.isfinite(out).all()


def test_null_class_is_none_or_minus_one_and_labels_matter():
    model = perturbed(UNet(tiny(num_classes=4)))
    x_t = torch.randn(1, 3, 8, 8).expand(4, -1, -1, -1)
    t = torch.full((4,), 300.0)
    with torch.no_grad():
        labelled = model(x_t, t, torch.tensor([-1, 0, 1, 3]))
        unlabelled = model(x_t, t)
    torch.testing.assert_close(labelled[0], unlabelled[0])  # -1 is the null class
    for i in (1, 2, 3):
        assert not torch.allclose(labelled[0], labelled[i])
    assert model.class_embed.num_embeddings == 4 + 1


def test_unconditional_net_refuses_labels():
    with pytest.raises(ValueError, match="num_classes"):
        UNet(tiny())(torch.randn(1, 3, 8, 8), torch.tensor([1.0]), torch.tensor([0]))


# --------------------------------------------------------------------------- attention


def reference_attention(block: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Self-attention written out per head with einsum (DDPM attn_block, multi-head)."""
    B, C, H, W = x.shape
    n, d = block.num_heads, C // block.num_heads
    h = F.group_norm(x, block.norm.num_groups, block.norm.weight, block.norm.bias, block.norm.eps)
    qkv = torch.einsum("oc,bcl->bol", block.qkv.weight[:, :, 0, 0], h.reshape(B, C, H * W))
    qkv = qkv + block.qkv.bias[None, :, None]
    q, k, v = qkv.chunk(3, dim=1)  # channels [q | k | v], each C = n heads of d
    outs = []
    for i in range(n):
        sl = slice(i * d, (i + 1) * d)
        w = torch.einsum("bdi,bdj->bij", q[:, sl], k[:, sl]) / math.sqrt(d)
        outs.append(torch.einsum("bij,bdj->bdi", w.softmax(dim=-1), v[:, sl]))
    o = torch.cat(outs, dim=1)
    o = (
        torch.einsum("oc,bcl->bol", block.proj.weight[:, :, 0, 0], o)
        + block.proj.bias[None, :, None]
    )
    return x + o.reshape(B, C, H, W)


def attention_case(num_heads: int, shape: tuple[int, ...], channels_last: bool):
    """An attention block with a non-zero output projection, an input of ``shape``, and
    the float reference output (computed before any memory-format change)."""
    torch.manual_seed(0)
    block = AttentionBlock(shape[1], num_heads=num_heads, groups=4)
    with torch.no_grad():
        block.proj.weight.normal_()
        block.proj.bias.normal_()
    x = torch.randn(*shape)
    expected = reference_attention(block, x)
    if channels_last:
        block = block.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    return block, x, expected


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_block_matches_reference(channels_last):
    block, x, expected = attention_case(4, (2, 16, 4, 6), channels_last)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("length", [16, 64])
def test_bf16_channels_first_attention_matches_float64_softmax_attention(length):
    # The bf16 CPU path (two products and a softmax, (B, heads, d, L) layout) against an
    # independent float64 softmax(Q Kᵀ / √d) V in the (B, heads, L, d) layout, on the same
    # bf16-rounded inputs, and its gradients.
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 16, length).bfloat16().requires_grad_() for _ in range(3))
    out = channels_first_attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 2, 16, length)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    Q, K, V = (t.transpose(-1, -2) for t in (q64, k64, v64))  # (B, heads, L, d)
    ref = torch.einsum("bhij,bhjd->bhid", (Q @ K.transpose(-1, -2) / 4.0).softmax(-1), V)
    ref = ref.transpose(-1, -2)
    assert _rel_err(out, ref) < 1e-2
    grad = torch.randn_like(ref)
    out.backward(grad.bfloat16())
    ref.backward(grad)
    for mine, theirs in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert _rel_err(mine, theirs) < 3e-2


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_block_under_bf16_autocast_matches_reference(channels_last):
    block, x, expected = attention_case(2, (4, 16, 8, 6), channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert _rel_err(out, expected) < 2e-2
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():  # bf16 weights and input, no autocast: the same path
        out = block.bfloat16()(x.bfloat16())
    assert _rel_err(out, expected) < 2e-2


def test_dropout_keeps_each_element_independently_with_probability_one_minus_p():
    p, n = 0.1, 200_000
    drop = Dropout(p).train()
    x = torch.ones(4, 5, 100, 100)  # n elements
    torch.manual_seed(0)
    y = drop(x)
    kept = y != 0
    # Kept values are scaled by exactly 1 / (1 - p); dropped ones are exactly 0.
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # Keep rate within 5 binomial standard deviations of 1 - p.
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # Independence: neighbours along each axis and across two calls are uncorrelated.
    flat = kept.double()
    pairs = [
        (flat[..., 1:], flat[..., :-1]),
        (flat[:, :, 1:], flat[:, :, :-1]),
        (flat[:, 1:], flat[:, :-1]),
        (flat, (drop(x) != 0).double()),
    ]
    for a, b in pairs:
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(corr) < 5 / math.sqrt(a.numel())
    # The mean is kept (E[y] = x): dropout's defining property.
    assert abs(y.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)


def test_dropout_gradient_is_the_mask_and_eval_is_identity():
    drop = Dropout(0.3).train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16, requires_grad=True)
    y = drop(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    mask = (y != 0).to(torch.bfloat16) / 0.7
    nonzero = x.detach() != 0
    assert torch.equal(x.grad[nonzero], mask[nonzero])
    drop.eval()
    assert drop(x) is x
    cl = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    assert drop.train()(cl).is_contiguous(memory_format=torch.channels_last)
    # Same state dict (none) as nn.Dropout: checkpoints of either load into the other.
    assert drop.state_dict() == torch.nn.Dropout(0.3).state_dict() == {}


def test_num_heads_need_only_divide_attention_widths():
    # 3 heads split the 24-channel level that has attention (and the middle), not level 0 (8).
    model = UNet(tiny(channels=8, channel_mults=(1, 3), num_heads=3))
    assert {m.num_heads for m in model.modules() if isinstance(m, AttentionBlock)} == {3}


def test_head_channels_overrides_num_heads():
    model = UNet(tiny(channels=16, num_heads=1, head_channels=4))
    heads = {m.num_heads for m in model.modules() if isinstance(m, AttentionBlock)}
    assert heads == {32 // 4}  # every attention block is at width 32 here


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("embedding", ["additive", "scale_shift"])
def test_gradients_reach_every_parameter(embedding):
    torch.manual_seed(0)
    model = UNet(tiny(embedding=embedding, num_classes=3))
    x_t, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t, cond = torch.tensor([5.0, 100.0, 600.0, 999.0]), torch.tensor([0, 1, 2, -1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step() -> None:
        opt.zero_grad()
        F.mse_loss(model(x_t, t, cond), target).backward()

    # With the zero-initialised output and residual convs, only conv_out learns at first...
    step()
    live = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
    assert live == {"conv_out.weight", "conv_out.bias"}
    # ... and the signal reaches every parameter within a few steps.
    for _ in range(3):
        opt.step()
        step()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_tiny_unet_overfits_one_batch():
    torch.manual_seed(0)
    model = UNet(tiny(channels=16, num_classes=2))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    alpha_bar = torch.tensor([0.99, 0.8, 0.3, 0.05])[:, None, None, None]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps  # q(x_t | x0), DDPM eq. 4
    t, cond = torch.tensor([10.0, 200.0, 500.0, 900.0]), torch.tensor([0, 1, -1, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = F.mse_loss(model(x_t, t, cond), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if losses[-1] < losses[0] / 10:
            break
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1], len(losses))


# --------------------------------------------------------------------------- memory format


@pytest.mark.parametrize("embedding", ["additive", "scale_shift"])
def test_channels_last_matches_contiguous(embedding):
    cfg = tiny(embedding=embedding, num_classes=3, image_size=16, attention_resolutions=(16, 8))
    model = perturbed(UNet(cfg))
    x_t = torch.randn(2, 3, 16, 16)
    t, cond = torch.tensor([3.0, 777.0]), torch.tensor([2, -1])
    with torch.no_grad():
        expected = model(x_t, t, cond)
        x_cl = x_t.to(memory_format=torch.channels_last)
        mixed = model(x_cl, t, cond)  # channels-last input, NCHW weights
        model = model.to(memory_format=torch.channels_last)
        out = model(x_cl, t, cond)
    torch.testing.assert_close(mixed, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- compile


def _compile_inputs():
    cfg = tiny(num_classes=3, embedding="scale_shift", time_input="log_snr")
    model = perturbed(UNet(cfg))
    x_t = torch.randn(2, 3, 8, 8)
    return model, (x_t, torch.tensor([-3.0, 6.5]), torch.tensor([1, -1]))


def test_compile_fullgraph_traces_without_graph_breaks():
    # backend="eager" runs Dynamo alone: fullgraph=True raises on any graph break, without
    # the minutes Inductor's C++ codegen takes on this CPU (see the slow test below).
    model, args = _compile_inputs()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), model(*args))
        torch.testing.assert_close(compiled(args[0], args[1]), model(args[0], args[1]))


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    model, args = _compile_inputs()
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = compiled(*args)
    print(f"torch.compile (inductor) first call: {time.perf_counter() - start:.1f} s")
    with torch.no_grad():
        torch.testing.assert_close(out, model(*args), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field", "detail"),
    [
        (dict(attention_resolutions=(16, 12)), "attention_resolutions", "[32, 16, 8, 4]"),
        (dict(groups=48), "groups", "128"),
        (dict(channels=100, groups=32), "groups", "100"),
        (dict(image_size=36), "image_size", "8"),
        (
            dict(image_size=16, attention_resolutions=(32,)),
            "attention_resolutions",
            "[16, 8, 4, 2]",
        ),
        (dict(num_heads=3), "num_heads", "3"),
        (dict(head_channels=48), "head_channels", "48"),
        (dict(dropout=1.0), "dropout", "1.0"),
        (dict(dropout=-0.1), "dropout", "-0.1"),
        (dict(channels=0), "channels", "0"),
        (dict(channels=2, groups=1, num_heads=1), "channels", ">= 4"),
        (dict(num_res_blocks=-1), "num_res_blocks", "-1"),
        (dict(in_channels=2.5), "in_channels", "2.5"),
        (dict(out_channels=0), "out_channels", "0"),
        (dict(num_classes=0), "num_classes", "0"),
        (dict(channel_mults=(1, 0)), "channel_mults[1]", "0"),
        (dict(channel_mults=()), "channel_mults", "()"),
        (dict(embedding="film"), "embedding", "film"),
        (dict(time_input="sigma"), "time_input", "sigma"),
        (dict(log_snr_scale=0.0), "log_snr_scale", "0.0"),
    ],
)
def test_config_errors_name_the_field(overrides, field, detail):
    with pytest.raises(ValueError) as info:
        UNetConfig(**overrides)
    message = str(info.value)
    assert f"'{field}" in message  # 'name' or 'name[i]'
    assert detail in message


def test_config_defaults_valid_and_round_trip_through_recipe_converter():
    cfg = structure_config(
        UNetConfig,
        {"channels": 64, "channel_mults": [1, 2], "attention_resolutions": [16], "num_classes": 10},
    )
    assert cfg.channel_mults == (1, 2)
    assert cfg.attention_resolutions == (16,)
    spec = load_registry().get("backbone", "unet").spec
    check_config_roundtrip(spec, cfg)
    check_config_roundtrip(spec)  # the defaults
    assert all(option_doc(f) for f in attrs.fields(UNetConfig))  # every option documented


def test_registers_the_unet_backbone():
    (spec,) = unet_mod.denoisekit_components()
    assert (spec.kind, spec.name, spec.config) == ("backbone", "unet", UNetConfig)
    model = spec.build(tiny())
    assert isinstance(model, UNet)
    assert UNet is spec.build


def test_run_checks_at_load_classes_and_output_channels(tmp_path):
    """A unet with fewer class rows than the data's labels failed mid-training (IndexError);
    one with other output channels failed at the first loss. Both now fail when loaded."""
    from denoisekit.errors import RecipeError
    from denoisekit.host.recipe import load_recipe
    from denoisekit.testing import write_recipe

    path = write_recipe(tmp_path)
    assert load_recipe(path, ["backbone.num_classes=10"]).backbone.config.num_classes == 10
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["backbone.num_classes=5"])
    assert "backbone.num_classes: the data has 10 classes but the unet embeds 5" in str(info.value)
    with pytest.raises(RecipeError, match=r"backbone\.out_channels: 2 output channels for 1 input"):
        load_recipe(path, ["backbone.out_channels=2"])
    assert load_recipe(path, ["backbone.out_channels=1"])
