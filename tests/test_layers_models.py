"""The NSR layer and the reference-compatible models."""

import pytest
import torch
import torch.nn.functional as F

from nsr_edge.layers import RoutingConfig, SparseConv2d, weight_norm_fold
from nsr_edge.models import ARCHITECTURES, PRESETS, ModelConfig, build_model, count_parameters


@pytest.mark.parametrize("scale,expected", [(2, 4_877_812), (3, 4_887_637), (4, 4_901_392)])
def test_edsr_nsr_readme_parameter_counts(scale, expected):
    model = build_model(ModelConfig("wdsr_nsr", scale, 3, blocks=16, width=64, width_multiplier=1.0, banks=4,
                                    cardinality=16))
    assert count_parameters(model) == expected


def test_state_dict_keys_match_the_reference_layout():
    model = build_model(ModelConfig("wdsr_nsr", 2, 3, blocks=3, width=16, width_multiplier=2.0, banks=4,
                                    cardinality=4))
    keys = set(model.state_dict())
    for k in ["body.0.weight_g", "body.0.weight_v", "body.0.bias", "body.4.weight_v", "skip.0.weight_v",
              "body.1.body.0.mlp.0.weight", "body.1.body.0.mlp.0.bias", "body.3.body.2.weight_g",
              "body.3.body.2.weight_v", "body.3.body.2.bias", "body.3.body.2.mlp.0.weight"]:
        assert k in keys, k
    assert model.state_dict()["body.1.body.0.weight_v"].shape == (4 * 32, 16, 3, 3)  # k*Cout rows
    assert model.state_dict()["body.1.body.0.mlp.0.weight"].shape == (4 * 4, 16)  # k*d routing logits


def test_reference_init():
    model = build_model(ModelConfig("wdsr_nsr", 2, 3, blocks=4, width=16, width_multiplier=2.0, banks=2,
                                    cardinality=2))
    sd = model.state_dict()
    assert torch.all(sd["body.1.body.0.weight_g"] == 2.0)
    assert torch.allclose(sd["body.1.body.2.weight_g"], torch.tensor(0.5))  # 1/sqrt(4 blocks)
    assert torch.all(sd["body.0.weight_g"] == 1.0) and torch.all(sd["body.0.bias"] == 0)


def reference_sparse_conv(x, conv: SparseConv2d):
    """The NSR layer computed independently: per sample, per output channel, with explicit loops over banks."""
    w = weight_norm_fold(conv.weight_g, conv.weight_v)
    k, d, cout = conv.banks, conv.cardinality, conv.out_channels
    outs = []
    for b in range(x.shape[0]):
        logits = conv.mlp(x[b].mean((-1, -2)))
        gamma = torch.softmax(logits.view(k, d), dim=0)  # softmax over banks, per cardinal group
        kernel = torch.zeros(cout, *w.shape[1:])
        bias = torch.zeros(cout)
        for o in range(cout):
            j = o // (cout // d)
            for i in range(k):
                kernel[o] += gamma[i, j] * w[i * cout + o]
                bias[o] += gamma[i, j] * conv.bias[i * cout + o]
        outs.append(F.conv2d(x[b : b + 1], kernel, bias, padding=conv.kernel_size // 2))
    return torch.cat(outs)


def test_sparse_conv_matches_an_independent_per_sample_implementation():
    torch.manual_seed(0)
    conv = SparseConv2d(8, 12, 3, banks=3, cardinality=4)
    with torch.no_grad():
        conv.weight_g.uniform_(0.5, 2.0)
        conv.bias.normal_()
        conv.mlp[0].weight.mul_(20)  # make routing clearly input-dependent
    x = torch.randn(3, 8, 9, 7)
    torch.testing.assert_close(conv(x), reference_sparse_conv(x, conv), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "gumbel", "straight_through"])
def test_routing_kinds_give_valid_gates_and_gradients(kind):
    torch.manual_seed(0)
    conv = SparseConv2d(4, 8, 3, banks=4, cardinality=2, routing=RoutingConfig(kind=kind, temperature=0.5))
    x = torch.randn(5, 4, 6, 6)
    conv.train()
    gates = conv.route(x)
    assert gates.shape == (5, 4, 2)
    if kind in ("softmax", "gumbel", "straight_through"):
        torch.testing.assert_close(gates.sum(1), torch.ones(5, 2))
    if kind in ("gumbel", "straight_through"):
        assert set(gates.detach().unique().tolist()) <= {0.0, 1.0}
    conv(x).square().mean().backward()
    assert conv.mlp[0].weight.grad is not None and conv.mlp[0].weight.grad.abs().sum() > 0
    conv.eval()
    if kind in ("gumbel", "straight_through"):  # deterministic argmax at eval
        assert torch.equal(conv.route(x), conv.route(x))


def test_learnable_temperature_and_sub_patch_pooling():
    conv = SparseConv2d(4, 8, 3, 2, 2, RoutingConfig(learnable_temperature=True, temperature=2.0, pool_grid=2))
    assert "log_temperature" in dict(conv.named_parameters())
    assert conv.mlp[0].in_features == 4 * 4
    conv(torch.randn(2, 4, 8, 8)).sum().backward()
    assert conv.log_temperature.grad is not None


def test_shared_routing_uses_one_router_per_block():
    cfg = ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 2, RoutingConfig(shared=True))
    sd = build_model(cfg).state_dict()
    assert "body.1.body.0.mlp.0.weight" in sd and "body.1.body.2.mlp.0.weight" not in sd


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_keeps_shapes(name):
    cfg = PRESETS[name].with_(blocks=1)
    model = build_model(cfg).eval()
    x = torch.rand(2, cfg.channels, 12, 10)
    assert model(x).shape == (2, cfg.channels, 12 * cfg.scale, 10 * cfg.scale)


def test_scale_one_models_have_an_identity_skip():
    model = build_model(PRESETS["wdsr_nsr_gray"].with_(blocks=1))
    assert len(model.skip) == 0
    assert set(ARCHITECTURES) >= {"wdsr_nsr", "wdsr"}


def test_bad_configs_are_refused():
    with pytest.raises(ValueError):
        ModelConfig(arch="nope")
    with pytest.raises(ValueError):
        SparseConv2d(4, 10, 3, banks=2, cardinality=4)  # 10 outputs not divisible by 4 groups
    with pytest.raises(ValueError):
        RoutingConfig(kind="magic")
