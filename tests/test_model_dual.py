import math

import pytest
import torch

from hnerv_fast.models.blocks import HNeRVBlock, PositionalEncoding
from hnerv_fast.config.dual import HNeRVModelConfig
from hnerv_fast.models.hnerv_dual import DualHNeRV
from hnerv_fast.train.schedule import cosine_multiplier


def test_positional_encoding_values():
    pe = PositionalEncoding(base=1.25, levels=3)
    coords = torch.tensor([[0.5, 0.0, 1.0]])
    out = pe(coords)
    assert out.shape == (1, 3 * 2 * 3)
    for c, v in enumerate([0.5, 0.0, 1.0]):
        for k in range(3):
            angle = v * 1.25**k * math.pi
            assert out[0, c * 6 + k].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert out[0, c * 6 + 3 + k].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("fc_hw, strides, out_act", [((4, 4), (2, 2, 2), "tanh"), ((2, 4), (4, 2), "sigmoid"),
                                                     ((1, 1), (5,), "none")])
def test_output_shapes_and_ranges(fc_hw, strides, out_act):
    config = HNeRVModelConfig(embed="pe_1.25_8", fc_dim=24, fc_hw=list(fc_hw), dec_strds=list(strides), lower_width=8,
                              out_act=out_act)
    model = DualHNeRV(config, clip_dim=40)
    rgb, clip = model(torch.rand(5, 3))
    h, w = config.output_size()
    assert rgb.shape == (5, 3, h, w) == (5, 3, fc_hw[0] * math.prod(strides), fc_hw[1] * math.prod(strides))
    assert clip.shape == (5, 40)
    assert torch.allclose(clip.norm(dim=-1), torch.ones(5), atol=1e-5)
    if out_act != "none":
        assert rgb.min() >= 0 and rgb.max() <= 1


def test_widths_shrink_and_floor_and_kernels_grow():
    config = HNeRVModelConfig(fc_dim=96, dec_strds=[5, 4, 2, 2, 2], reduce=1.2, lower_width=32)
    assert config.widths() == [80, 67, 56, 47, 39]
    assert HNeRVModelConfig(fc_dim=40, dec_strds=[2, 2, 2], lower_width=32).widths() == [33, 32, 32]
    assert config.kernels() == [1, 3, 5, 5, 5]
    model = DualHNeRV(config, clip_dim=8)
    assert [block.conv.kernel_size[0] for block in model.blocks] == [1, 3, 5, 5, 5]


def test_param_groups_cover_every_parameter_once():
    model = DualHNeRV(HNeRVModelConfig(embed="pe_1.25_4", fc_dim=16, lower_width=8), clip_dim=8)
    groups = model.param_groups()
    assert list(groups) == ["decoder", "rgb_head", "clip_head"]
    ids = [id(p) for params in groups.values() for p in params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_bad_coords_shape():
    model = DualHNeRV(HNeRVModelConfig(embed="pe_1.25_4", fc_dim=16, lower_width=8), clip_dim=8)
    with pytest.raises(ValueError, match="coords"):
        model(torch.rand(4, 2))


def test_cosine_schedule():
    up, pw, lo = 0.1, 1.0, 0.1
    assert cosine_multiplier(0.0, up, pw, lo) == pytest.approx(0.1)
    assert cosine_multiplier(0.05, up, pw, lo) == pytest.approx(0.55)
    assert cosine_multiplier(0.1, up, pw, lo) == pytest.approx(1.0)
    assert cosine_multiplier(0.55, up, pw, lo) == pytest.approx(0.5)
    assert cosine_multiplier(1.0, up, pw, lo) == pytest.approx(0.0, abs=1e-12)


def test_the_stem_is_followed_by_the_activation():
    """As HNeRV's stem block (1x1 conv, then the activation): with ReLU the first block only sees values >= 0."""
    model = DualHNeRV(HNeRVModelConfig(act="relu", fc_hw=[2, 2], dec_strds=[2]), clip_dim=512)
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(torch.rand(8, 3))
    assert seen[0].min() >= 0 and (seen[0] == 0).any()


@pytest.mark.parametrize("stride", [1, 2, 4, 5])
def test_block_is_conv_pixel_shuffle_activation(stride):
    """HNeRVBlock reorders its convolution's output channels for speed; the function and the parameters' meaning
    stay those of Conv2d -> nn.PixelShuffle -> activation (checkpoints and the published layout), forward and
    backward, in float64."""
    torch.manual_seed(0)
    block = HNeRVBlock(6, 5, stride, 3, "gelu").double()
    published = torch.nn.Sequential(block.conv, torch.nn.PixelShuffle(stride), block.act)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64, requires_grad=True)
    y, expected = block(x), published(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad((y * g).sum(), (x, block.conv.weight, block.conv.bias))
    want = torch.autograd.grad((expected * g).sum(), (x, block.conv.weight, block.conv.bias))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("out_act", ["tanh", "sigmoid"])
def test_output_activation_runs_in_float32_under_bf16_autocast(out_act):
    """Under bf16 autocast the convolutions run in bf16 but the output activation in float32 on the head's
    output: the image is not rounded to bf16's steps (1/256 on [0.5, 1))."""
    config = HNeRVModelConfig(embed="pe_1.25_8", fc_dim=24, fc_hw=[2, 2], dec_strds=[2, 2], lower_width=8,
                              out_act=out_act)
    torch.manual_seed(0)
    model = DualHNeRV(config, clip_dim=16)
    head = {}
    model.rgb_head.register_forward_hook(lambda _m, _i, out: head.setdefault("out", out))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rgb, _ = model(torch.rand(4, 3))
    assert head["out"].dtype == torch.bfloat16 and rgb.dtype == torch.float32
    pre = head["out"].float()
    want = (torch.tanh(pre) + 1) * 0.5 if out_act == "tanh" else torch.sigmoid(pre)
    torch.testing.assert_close(rgb, want, rtol=0, atol=0)
    assert (rgb != rgb.bfloat16().float()).float().mean() > 0.9  # not on bf16's grid


def test_clip_embedding_is_a_float32_unit_vector_under_bf16_autocast():
    """The CLIP loss is 1 - <embedding, target>: a cosine only while the embedding has norm 1."""
    config = HNeRVModelConfig(embed="pe_1.25_8", fc_dim=24, fc_hw=[2, 2], dec_strds=[2, 2], lower_width=8)
    torch.manual_seed(0)
    model = DualHNeRV(config, clip_dim=512)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, clip = model(torch.rand(16, 3))
    assert clip.dtype == torch.float32
    torch.testing.assert_close(clip.norm(dim=-1), torch.ones(16), rtol=0, atol=1e-6)
