"""Deploy form == training form: for every architecture, routing option and lowering strategy."""

import pytest
import torch

from nsr_edge.costs import cost_summary
from nsr_edge.deploy import STRATEGIES, hard_routing_report, to_deploy
from nsr_edge.layers import RoutingConfig
from nsr_edge.models import ARCHITECTURES, ModelConfig, build_model

ROUTINGS = [
    RoutingConfig(),
    RoutingConfig(kind="sigmoid"),
    RoutingConfig(temperature=0.3, normalize_logits=True),
    RoutingConfig(pool_grid=2, shared=True),
    RoutingConfig(learnable_temperature=True, temperature=2.0),
]


def perturbed(cfg: ModelConfig) -> torch.nn.Module:
    """A model whose routing is far from uniform, so a wrong bank layout cannot hide."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.2 * torch.randn_like(p))
            if "mlp" in name:
                p.mul_(10)
    return model


def configs():
    for arch in sorted(ARCHITECTURES):
        for scale, channels in [(2, 3), (3, 3), (4, 3), (1, 1), (1, 3)]:
            yield ModelConfig(arch, scale, channels, blocks=2, width=8, width_multiplier=2.0, banks=3, cardinality=4)
    for routing in ROUTINGS:
        yield ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 2, routing)


@pytest.mark.parametrize("cfg", list(configs()), ids=lambda c: f"{c.arch}-x{c.scale}-c{c.channels}-{c.routing}")
@pytest.mark.parametrize("strategy", ["output-mix", "kernel-mix"])
def test_exact_lowerings_equal_the_training_form(cfg, strategy):
    model = perturbed(cfg)
    x = torch.rand(3, cfg.channels, 13, 11)
    with torch.no_grad():
        torch.testing.assert_close(to_deploy(model, strategy)(x), model(x), atol=2e-5, rtol=1e-5)


def test_deploy_form_has_static_banks_with_folded_weight_norm():
    cfg = ModelConfig("wdsr_nsr", 2, 3, 1, 8, 2.0, 4, 2)
    model = perturbed(cfg)
    deployed = to_deploy(model, "output-mix")
    assert not any("weight_g" in k or "weight_v" in k for k in deployed.state_dict())
    conv = deployed.body[1].body[0]
    assert conv.banks.conv.weight.shape == (4 * 16, 8, 3, 3)  # [k*Cout, Cin, kh, kw]
    w = model.body[1].body[0].folded_weight()
    torch.testing.assert_close(conv.banks.bank(2)[0], w[2 * 16 : 3 * 16])


@pytest.mark.parametrize("kind", ["straight_through", "gumbel"])
@pytest.mark.parametrize("shared", [False, True])
def test_hard_routing_is_exact_when_routing_is_one_hot(kind, shared):
    cfg = ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 2, RoutingConfig(kind=kind, shared=shared))
    report = hard_routing_report(perturbed(cfg), torch.rand(4, 3, 12, 12))
    assert report.exact and report.max_abs_error == 0.0


def test_hard_routing_reports_its_error_for_soft_routing():
    cfg = ModelConfig("wdsr_nsr", 2, 3, 2, 8, 2.0, 4, 2)
    report = hard_routing_report(perturbed(cfg), torch.rand(4, 3, 12, 12))
    assert not report.exact
    assert report.max_abs_error > 1e-3
    assert 0.25 <= report.mean_top1_probability < 1.0
    assert report.min_top1_margin >= 0


def test_macs_per_pixel_per_form():
    cfg = ModelConfig("wdsr_nsr", 2, 3, 1, 8, 1.0, 4, 1)
    summary = cost_summary(build_model(cfg), scale=2, tile=16)
    macs = summary["macs_per_pixel"]
    conv = 8 * 8 * 9  # one bank of a block conv, per pixel
    head_conv = 3 * 8 * 9 + 8 * 12 * 9 + 3 * 12 * 25  # head, tail, 5x5 skip
    per_tile_routing = (8 + 8 * 4 / 256) * 2  # pooling + routing MLP, per pixel, both block convs
    per_tile_mixing = (4 * 8 * 8 * 9 + 4 * 8) / 256 * 2
    assert macs["training"]["per_input_pixel"] == pytest.approx(head_conv + 2 * conv + per_tile_routing
                                                                + per_tile_mixing, rel=1e-3)
    assert macs["output-mix"]["per_input_pixel"] == pytest.approx(head_conv + 2 * (4 * conv + 4 * 8)
                                                                  + per_tile_routing, rel=1e-3)
    assert macs["hard"]["per_input_pixel"] == pytest.approx(head_conv + 2 * conv + per_tile_routing, rel=1e-3)
    assert macs["hard"]["per_output_pixel"] == pytest.approx(macs["hard"]["per_input_pixel"] / 4, rel=1e-3)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        to_deploy(build_model(ModelConfig(blocks=1, width=8)), "magic")
    assert set(STRATEGIES) == {"output-mix", "kernel-mix", "hard"}
