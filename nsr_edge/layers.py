"""The NSR layer in its training form, and the weight-normalised dense conv beside it.

Parameter names follow the reference code (github ychfan/pt_ir, models/wdsr_nsr.py) so its checkpoints load:
`weight_g`, `weight_v`, `bias` (from `torch.nn.utils.weight_norm`) and `mlp.0.weight/bias` (the routing MLP).
Weight norm is written out here instead of using `torch.nn.utils.weight_norm`, which is deprecated and whose
parametrizations successor renames the keys.

Layout facts the deploy form relies on (see ../shared/notes/field-notes.md):
- the weight holds k banks stacked on dim 0: row ``i * Cout + o`` belongs to bank ``i``;
- output channel ``o = j * (Cout // d) + c`` belongs to cardinal group ``j``;
- routing logits come out of the MLP as index ``i * d + j`` (viewed ``(B, k, d)``), softmax over the k banks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ROUTING_KINDS = ("softmax", "sigmoid", "gumbel", "straight_through")


@dataclass(frozen=True)
class RoutingConfig:
    """How a sparse conv turns pooled features into bank weights (the paper's ablations are options here).

    kind: ``softmax`` (the reference), ``sigmoid`` (CondConv-style, independent gates), ``gumbel``
      (Gumbel-softmax with hard one-hot samples while training, argmax at eval) or ``straight_through``
      (one-hot argmax forward, softmax gradient backward; argmax at eval).
    temperature: logits are divided by it; ``learnable_temperature`` makes it a parameter (stored as its log).
    normalize_logits: standardise logits over the k banks before the temperature. A plain linear head can shrink its
      logits and so cancel any temperature (field notes); with normalised logits the temperature means something.
    pool_grid: 1 pools the whole tile (the reference); g > 1 pools a g x g grid of sub-patches and feeds all of them
      to the routing MLP.
    shared: route both convs of a block from the block input with one MLP (the paper's shared-routing ablation)
      instead of each conv routing on its own input.
    """

    kind: str = "softmax"
    temperature: float = 1.0
    learnable_temperature: bool = False
    normalize_logits: bool = False
    pool_grid: int = 1
    shared: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ROUTING_KINDS:
            raise ValueError(f"routing kind must be one of {ROUTING_KINDS}, got {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"routing temperature must be > 0, got {self.temperature}")
        if self.pool_grid < 1:
            raise ValueError(f"pool_grid must be >= 1, got {self.pool_grid}")

    @property
    def is_hard_at_eval(self) -> bool:
        return self.kind in ("gumbel", "straight_through")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "RoutingConfig":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown routing options: {sorted(unknown)}")
        return cls(**data)


def weight_norm_fold(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """``g * v / ||v||`` with the norm per output row, exactly as ``torch.nn.utils.weight_norm(dim=0)``."""
    norm = weight_v.flatten(1).norm(dim=1).view(-1, *([1] * (weight_v.dim() - 1)))
    return weight_v * (weight_g / norm)


class WNConv2d(nn.Module):
    """Dense conv with weight norm (keys ``weight_g``, ``weight_v``, ``bias``), 'same' padding, stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, g_init: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Conv2d's default init, as the reference inherits it
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.full((out_channels, 1, 1, 1), float(g_init)))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def folded_weight(self) -> torch.Tensor:
        return weight_norm_fold(self.weight_g, self.weight_v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.folded_weight(), self.bias, padding=self.padding)

    def macs_per_pixel(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_size**2

    def tile_macs(self, h: int, w: int) -> float:
        return float(self.macs_per_pixel() * h * w)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


def pool_for_routing(x: torch.Tensor, pool_grid: int) -> torch.Tensor:
    """Average-pool a tile for the routing MLP: the whole tile (reference) or a g x g grid of sub-patches."""
    if pool_grid == 1:
        return x.mean((-1, -2))
    return F.adaptive_avg_pool2d(x, pool_grid).flatten(1)


def normalize_over_banks(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero-mean, unit-variance logits over the banks axis (dim 1 of ``(B, k, d)``)."""
    z = z - z.mean(1, keepdim=True)
    return z / torch.sqrt(z.pow(2).mean(1, keepdim=True) + eps)


def one_hot_argmax(z: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return F.one_hot(z.argmax(dim), z.shape[dim]).movedim(-1, dim).to(z.dtype)


def gates_from_logits(z: torch.Tensor, kind: str, training: bool) -> torch.Tensor:
    """Bank weights from logits ``(B, k, d)``; the banks axis is dim 1."""
    if kind == "softmax":
        return torch.softmax(z, dim=1)
    if kind == "sigmoid":
        return torch.sigmoid(z)
    if kind == "gumbel":
        return F.gumbel_softmax(z, tau=1.0, hard=True, dim=1) if training else one_hot_argmax(z)
    if kind == "straight_through":
        hard = one_hot_argmax(z)
        if not training:
            return hard
        soft = torch.softmax(z, dim=1)
        return hard + (soft - soft.detach())  # forward: exactly one-hot; backward: the softmax gradient
    raise ValueError(f"unknown routing kind {kind!r}")


class SparseConv2d(nn.Module):
    """NSR sparse conv, training form: per-tile kernel mixing of k weight-normalised banks.

    Each batch sample is one tile and gets one routing vector. The mixed kernel is applied with one grouped conv
    over the batch folded into channels (the reference's trick; 5x cheaper to train than output mixing).
    ``mlp`` is None when the block shares the routing of its first conv (``RoutingConfig.shared``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        banks: int = 4,
        cardinality: int = 16,
        routing: RoutingConfig | None = None,
        own_router: bool = True,
        g_init: float = 1.0,
    ) -> None:
        super().__init__()
        if out_channels % cardinality:
            raise ValueError(f"out_channels {out_channels} must be divisible by cardinality {cardinality}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.banks, self.cardinality = banks, cardinality
        self.routing = routing or RoutingConfig()
        rows = banks * out_channels
        v = torch.empty(rows, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.full((rows, 1, 1, 1), float(g_init)))
        self.bias = nn.Parameter(torch.zeros(rows))
        # Routing MLP as `mlp.0` directly on the conv: the reference's state_dict key is `mlp.0.weight`.
        self.mlp = (
            nn.Sequential(nn.Linear(in_channels * self.routing.pool_grid**2, banks * cardinality))
            if own_router
            else None
        )
        self.record_routing = False
        self.last_logits: torch.Tensor | None = None
        log_t = torch.tensor(math.log(self.routing.temperature))
        if self.routing.learnable_temperature and own_router:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    def folded_weight(self) -> torch.Tensor:
        return weight_norm_fold(self.weight_g, self.weight_v)

    @property
    def has_router(self) -> bool:
        return self.mlp is not None

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def routing_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled logits ``(B, k, d)``: normalised when asked, divided by the temperature."""
        if self.mlp is None:
            raise RuntimeError("this sparse conv shares its block's routing: pass gates to forward()")
        z = self.mlp(pool_for_routing(x, self.routing.pool_grid)).view(-1, self.banks, self.cardinality)
        if self.routing.normalize_logits:
            z = normalize_over_banks(z)
        return z / self.temperature

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """Bank weights ``gamma (B, k, d)`` for each tile of the batch."""
        logits = self.routing_logits(x)
        if self.record_routing:  # for auxiliary routing losses and statistics (sparsity.py)
            self.last_logits = logits
        return gates_from_logits(logits, self.routing.kind, self.training)

    def forward(self, x: torch.Tensor, gates: torch.Tensor | None = None) -> torch.Tensor:
        gamma = self.route(x) if gates is None else gates  # (B, k, d)
        return mix_and_convolve(x, self.folded_weight(), self.bias, gamma, self.padding)

    def macs_per_pixel(self) -> int:
        """MACs of the convolution per output pixel: one (mixed) bank."""
        return self.out_channels * self.in_channels * self.kernel_size**2

    def tile_macs(self, h: int, w: int) -> float:
        """One tile in training form: one mixed bank per pixel, plus mixing the kernels and routing once per tile."""
        head = self.in_channels * h * w + self.mlp[0].weight.numel() if self.mlp is not None else 0
        mixing = self.weight_v.numel() + self.bias.numel()
        return float(self.macs_per_pixel() * h * w + mixing + head)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, banks={self.banks}, "
            f"cardinality={self.cardinality}, routing={self.routing.kind}"
        )


def mix_kernels(
    weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample kernels ``(B*Cout, Cin, kh, kw)`` and biases ``(B*Cout,)`` from k banks and ``gamma (B, k, d)``."""
    batch, banks, card = gamma.shape
    rows = weight.shape[0]
    cout = rows // banks
    w = weight.view(banks, card, cout // card, *weight.shape[1:])
    mixed = torch.einsum("bkd,kdoihw->bdoihw", gamma, w).reshape(batch * cout, *weight.shape[1:])
    b = torch.einsum("bkd,kdo->bdo", gamma, bias.view(banks, card, cout // card)).reshape(batch * cout)
    return mixed, b


def mix_and_convolve(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gamma: torch.Tensor, padding: int
) -> torch.Tensor:
    """Kernel mixing: one grouped conv with the batch folded into channels."""
    batch = x.shape[0]
    mixed_w, mixed_b = mix_kernels(weight, bias, gamma)
    y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), mixed_w, mixed_b, padding=padding, groups=batch)
    return y.view(batch, -1, *y.shape[2:])
