"""Deploy form: every sparse conv becomes a routing head + k static kernel banks, weight norm folded.

Three lowering strategies (../shared/notes/design.md):
- ``output-mix``: one static conv with k*Cout outputs, then a per-channel weighted sum of the k bank outputs. Exact,
  static weights (XNNPACK / ANE / INT8 friendly), k x the MACs of one bank. Written in the graph style XNNPACK
  delegates whole: softmax over the last dim, gates broadcast by a constant matmul, 4-D tensors, slices.
- ``kernel-mix``: mix the kernels per tile, then conv with the mixed (dynamic) kernel. Exact, ~1 bank of MACs, but
  dynamic weights fall off every fast CPU path.
- ``hard``: top-1 bank per tile and cardinal group, the selected static rows gathered per tile. Exact when routing is
  one-hot; otherwise an approximation whose error `hard_routing_report` measures.

The deploy model is a different graph with the same function; `tests/test_deploy.py` proves it per architecture.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RoutingConfig, SparseConv2d, WNConv2d, weight_norm_fold
from .models import ResidualBlock

STRATEGIES = ("output-mix", "kernel-mix", "hard")


class RoutingHead(nn.Module):
    """Pool -> conv (the routing MLP, folded) -> gates ``(B, d*k)``, ordered ``j*k + i`` (group j, bank i).

    The MLP's rows are permuted from the reference order ``i*d + j`` so that the softmax runs over the last dim.
    A g x g pooled grid is handled by a g x g conv without padding, which equals the linear layer on the flattened
    grid. The temperature is folded into the conv unless logits are normalised first (then it stays a constant scale).
    """

    def __init__(
        self, linear: nn.Linear, in_channels: int, banks: int, cardinality: int, routing: RoutingConfig,
        temperature: float, hard: bool,
    ) -> None:
        super().__init__()
        g = routing.pool_grid
        self.banks, self.cardinality, self.pool_grid = banks, cardinality, g
        self.kind = "onehot" if hard or routing.is_hard_at_eval else routing.kind
        self.normalize_logits = routing.normalize_logits
        order = torch.arange(banks * cardinality).view(banks, cardinality).t().reshape(-1)  # j*k+i <- i*d+j
        weight = linear.weight.detach()[order].view(banks * cardinality, in_channels, g, g)
        bias = linear.bias.detach()[order]
        self.inv_temperature = 1.0 / temperature
        if not self.normalize_logits:  # fold the temperature into the conv
            weight, bias = weight * self.inv_temperature, bias * self.inv_temperature
        self.proj = nn.Conv2d(in_channels, banks * cardinality, g)
        with torch.no_grad():
            self.proj.weight.copy_(weight)
            self.proj.bias.copy_(bias)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled logits ``(B, d, k)``."""
        pooled = x.mean((2, 3), keepdim=True) if self.pool_grid == 1 else F.adaptive_avg_pool2d(x, self.pool_grid)
        z = self.proj(pooled).reshape(x.shape[0], self.cardinality, self.banks)
        if self.normalize_logits:
            z = z - z.mean(-1, keepdim=True)
            z = z / torch.sqrt((z * z).mean(-1, keepdim=True) + 1e-5) * self.inv_temperature
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        if self.kind == "softmax":
            g = torch.softmax(z, dim=-1)
        elif self.kind == "sigmoid":
            g = torch.sigmoid(z)
        else:  # argmax one-hot: straight-through / Gumbel models at eval, and the hard strategy
            g = F.one_hot(z.argmax(-1), self.banks).to(z.dtype)
        return g.reshape(x.shape[0], self.cardinality * self.banks)

    def tile_macs(self, h: int, w: int) -> float:
        return self.proj.in_channels * h * w + self.proj.weight.numel()


class KernelBanks(nn.Module):
    """k static banks as one conv with k*Cout outputs: weight ``[k*Cout, Cin, kh, kw]``, row ``i*Cout + o``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, banks: int) -> None:
        super().__init__()
        self.banks = banks
        self.out_channels = weight.shape[0] // banks
        self.conv = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2], padding=weight.shape[2] // 2)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)

    def bank(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(i * self.out_channels, (i + 1) * self.out_channels)
        return self.conv.weight[rows], self.conv.bias[rows]


class DeploySparseConv(nn.Module):
    """Base of the three lowerings: routing head (or gates from the block) + static banks."""

    def __init__(self, head: RoutingHead | None, banks: KernelBanks, cardinality: int) -> None:
        super().__init__()
        self.head = head
        self.banks = banks
        self.num_banks, self.cardinality = banks.banks, cardinality
        self.in_channels = banks.conv.in_channels
        self.out_channels = banks.out_channels
        self.kernel_size = banks.conv.kernel_size[0]

    def route(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("this conv shares its block's routing: pass gates to forward()")
        return self.head(x)

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        return self.apply_banks(x, self.route(x) if gates is None else gates)

    def apply_banks(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def one_bank_macs(self, h: int, w: int) -> float:
        return self.out_channels * self.in_channels * self.kernel_size**2 * h * w


class OutputMixingConv(DeploySparseConv):
    """All k banks run as one static conv; outputs mixed per channel by the gates."""

    def __init__(self, head: RoutingHead | None, banks: KernelBanks, cardinality: int) -> None:
        super().__init__(head, banks, cardinality)
        k, cout, d = self.num_banks, self.out_channels, cardinality
        # expand[j*k + i, i*Cout + o] = 1 where output channel o is in cardinal group j.
        expand = torch.zeros(d * k, k * cout)
        group_of = torch.arange(cout) // (cout // d)
        for i in range(k):
            expand[group_of * k + i, i * cout + torch.arange(cout)] = 1.0
        self.register_buffer("expand", expand)

    def apply_banks(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        y = self.banks.conv(x)  # (B, k*Cout, H, W)
        per_channel = torch.matmul(gates, self.expand).reshape(x.shape[0], -1, 1, 1)
        y = y * per_channel
        cout = self.out_channels
        out = y[:, 0:cout]
        for i in range(1, self.num_banks):
            out = out + y[:, i * cout : (i + 1) * cout]
        return out

    def tile_macs(self, h: int, w: int) -> float:
        mix = self.num_banks * self.out_channels * h * w  # gate multiply (the adds are the same order)
        head = self.head.tile_macs(h, w) if self.head is not None else 0
        return self.num_banks * self.one_bank_macs(h, w) + mix + head


class KernelMixingConv(DeploySparseConv):
    """Per-tile mixed kernel, then one grouped conv (dynamic weights).

    The mixing is a batched matmul over cardinal groups on 3-D views, not the training form's einsum: exported, the
    einsum becomes 7-D permutes/unsqueezes that the XNNPACK partitioner accepts but XNNPACK cannot define (at most 6
    dims), so the ``.pte`` failed to load ("Failed to load method forward, error 0x1", ExecuTorch ``Error::Internal``
    from the XNNPACK backend's init: ``xnn_status_unsupported_parameter``).
    """

    def apply_banks(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        k, d = self.num_banks, self.cardinality
        g = gates.view(-1, d, k).permute(1, 0, 2)  # (d, B, k)
        w = self.banks.conv.weight
        mixed = torch.bmm(g, w.view(k, d, -1).permute(1, 0, 2))  # (d, B, Cout/d * Cin*kh*kw)
        bias = torch.bmm(g, self.banks.conv.bias.view(k, d, -1).permute(1, 0, 2))  # (d, B, Cout/d)
        weight = mixed.permute(1, 0, 2).reshape(-1, *w.shape[1:])  # (B*Cout, Cin, kh, kw), row b*Cout + o
        return _per_tile_conv(x, weight, bias.permute(1, 0, 2).reshape(-1), self.kernel_size // 2)

    def tile_macs(self, h: int, w: int) -> float:
        mixing = self.banks.conv.weight.numel() + self.banks.conv.bias.numel()
        head = self.head.tile_macs(h, w) if self.head is not None else 0
        return self.one_bank_macs(h, w) + mixing + head


class HardRoutedConv(DeploySparseConv):
    """Top-1 bank per tile and cardinal group: gather the selected static rows, one conv per tile."""

    def apply_banks(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        k, d, cout = self.num_banks, self.cardinality, self.out_channels
        choice = gates.view(-1, d, k).argmax(-1)  # (B, d)
        w = self.banks.conv.weight.view(k, d, cout // d, *self.banks.conv.weight.shape[1:])
        b = self.banks.conv.bias.view(k, d, cout // d)
        groups = torch.arange(d)
        weight = w[choice, groups].reshape(-1, *w.shape[3:])  # (B*Cout, Cin, kh, kw)
        bias = b[choice, groups].reshape(-1)
        return _per_tile_conv(x, weight, bias, self.kernel_size // 2)

    def tile_macs(self, h: int, w: int) -> float:
        head = self.head.tile_macs(h, w) if self.head is not None else 0
        return self.one_bank_macs(h, w) + head


def _per_tile_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """Each tile convolved with its own kernel ``(B*Cout, Cin, kh, kw)``: one conv, the batch folded into groups."""
    batch = x.shape[0]
    y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), weight, bias, padding=padding, groups=batch)
    return y.view(batch, -1, *y.shape[2:])


LOWERINGS: dict[str, type[DeploySparseConv]] = {
    "output-mix": OutputMixingConv,
    "kernel-mix": KernelMixingConv,
    "hard": HardRoutedConv,
}


def fold_dense(conv: WNConv2d) -> nn.Conv2d:
    plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        plain.weight.copy_(weight_norm_fold(conv.weight_g, conv.weight_v))
        plain.bias.copy_(conv.bias)
    return plain


def deploy_sparse_conv(conv: SparseConv2d, strategy: str) -> DeploySparseConv:
    with torch.no_grad():
        weight = conv.folded_weight().detach().clone()
        bias = conv.bias.detach().clone()
    banks = KernelBanks(weight, bias, conv.banks)
    head = None
    if conv.has_router:
        head = RoutingHead(
            conv.mlp[0], conv.in_channels, conv.banks, conv.cardinality, conv.routing,
            float(conv.temperature), hard=strategy == "hard",
        )
    return LOWERINGS[strategy](head, banks, conv.cardinality)


def to_deploy(model: nn.Module, strategy: str = "output-mix") -> nn.Module:
    """A copy of ``model`` in deploy form: static banks + routing heads, weight norm folded, eval mode."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    deployed = copy.deepcopy(model).eval()

    def replace(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, SparseConv2d):
                setattr(parent, name, deploy_sparse_conv(child, strategy))
            elif isinstance(child, WNConv2d):
                setattr(parent, name, fold_dense(child))
            else:
                replace(child)

    replace(deployed)
    for p in deployed.parameters():
        p.requires_grad_(False)
    return deployed


# ----------------------------------------------------------------------------------------------- hard routing check


@dataclass
class HardRoutingReport:
    max_abs_error: float
    mean_abs_error: float
    mean_top1_probability: float  # of the routing softmax; 1.0 means routing is (nearly) one-hot
    min_top1_margin: float  # smallest gap between the best and second-best routing probability
    exact: bool
    median_top1_margin: float = 1.0
    bank_usage: list[list[float]] = field(default_factory=list)  # per routed layer (and group): share of tiles per bank


@torch.no_grad()
def hard_routing_report(model: nn.Module, x: torch.Tensor) -> HardRoutingReport:
    """How far hard top-1 routing is from the model's own routing (training form, eval mode) on tiles ``x``.

    ``exact`` is bitwise equality: it holds when the model's routing is one-hot (straight-through / Gumbel models),
    because mixing with a one-hot vector selects the bank's weights exactly.
    """
    was_training = model.training
    model.eval()
    soft = to_deploy(model, "output-mix")
    hard = to_deploy(model, "hard")
    y_soft, y_hard = model(x), hard(x)
    model.train(was_training)
    # Margins from the routing probabilities (softmax of the heads' logits), not from the gates: a one-hot model's
    # gates have margin 1 whatever its logits, while INT8/fp16 heads flip decisions where the logits are close.
    probs: list[torch.Tensor] = []
    hooks = [
        m.head.register_forward_hook(lambda head, inputs, _out: probs.append(torch.softmax(head.logits(inputs[0]), -1)))
        for m in soft.modules()
        if isinstance(m, DeploySparseConv) and m.head is not None
    ]
    soft(x)
    for h in hooks:
        h.remove()
    top1, margins, usage = [], [], []
    for p in probs:
        top2 = p.topk(min(2, p.shape[-1]), dim=-1).values
        top1.append(top2[..., 0].flatten())
        margins.append((top2[..., 0] - top2[..., -1]).flatten())
        choice = p.reshape(-1, p.shape[-1]).argmax(-1)
        usage.append((torch.bincount(choice, minlength=p.shape[-1]).float() / len(choice)).tolist())
    err = (y_soft - y_hard).abs()
    return HardRoutingReport(
        max_abs_error=float(err.max()),
        mean_abs_error=float(err.mean()),
        mean_top1_probability=float(torch.cat(top1).mean()) if top1 else 1.0,
        min_top1_margin=float(torch.cat(margins).min()) if margins else 1.0,
        exact=bool(torch.equal(y_soft, y_hard)),
        median_top1_margin=float(torch.cat(margins).median()) if margins else 1.0,
        bank_usage=usage,
    )


__all__ = [
    "STRATEGIES", "RoutingHead", "KernelBanks", "DeploySparseConv", "OutputMixingConv", "KernelMixingConv",
    "HardRoutedConv", "to_deploy", "hard_routing_report", "HardRoutingReport",
    "ResidualBlock",
]
