"""Models by name: the reference WDSR-NSR network and its dense baseline, built from a saved config.

A model is always built from a `ModelConfig` (stored inside every checkpoint and model card), through the
architecture registry, in the spirit of BasicSR's ``ARCH_REGISTRY``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

import torch
from torch import nn

from .layers import RoutingConfig, SparseConv2d, WNConv2d

MAX_PARAMS = 500_000_000  # 2 GiB of float32 weights: far above any restoration net, far below an out-of-memory kill
IMAGE_MEAN = 0.5  # the reference subtracts 0.5 from inputs in [0, 1] and adds it back at the end


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network. Defaults are the reference code's WDSR-NSR defaults.

    width: residual units C; width_multiplier: the block expands C -> C*wm -> C; banks: k kernel banks;
    cardinality: d cardinal groups (each group of output channels routes independently).
    """

    arch: str = "wdsr_nsr"
    scale: int = 2
    channels: int = 3
    blocks: int = 16
    width: int = 32
    width_multiplier: float = 4.0
    banks: int = 4
    cardinality: int = 16
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
        if self.scale < 1 or self.scale > 8:
            raise ValueError(f"scale must be 1..8, got {self.scale}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {self.channels}")
        for name, kind in (("scale", int), ("channels", int), ("blocks", int), ("width", int), ("banks", int),
                           ("cardinality", int), ("width_multiplier", (int, float))):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(self.width_multiplier):
            raise ValueError(f"width_multiplier must be finite, got {self.width_multiplier}")
        if self.blocks < 1 or self.width < 1 or self.width_multiplier <= 0:
            raise ValueError("blocks, width and width_multiplier must be positive")
        if self.inner_width < 1:
            raise ValueError(f"width {self.width} x width_multiplier {self.width_multiplier:g} leaves no channels")
        if isinstance(self.routing, dict):  # tolerate dicts from JSON
            object.__setattr__(self, "routing", RoutingConfig.from_dict(self.routing))
        if not ARCHITECTURES[self.arch].sparse:  # routing fields mean nothing for a dense net: one canonical form
            object.__setattr__(self, "banks", 1)
            object.__setattr__(self, "cardinality", 1)
            object.__setattr__(self, "routing", RoutingConfig())
        if self.banks < 1 or self.cardinality < 1:
            raise ValueError(f"banks (k) and cardinality (d) must be >= 1, got k={self.banks}, d={self.cardinality}")
        for what, n in (("width (--channels)", self.width), ("inner width C*wm", self.inner_width)):
            if n % self.cardinality:
                raise ValueError(f"{what} {n} must be divisible by cardinality {self.cardinality}")
        weights = self.param_estimate()
        if weights > MAX_PARAMS:
            raise ValueError(f"this configuration has about {weights / 1e6:,.0f}M parameters "
                             f"({4 * weights / 2**30:,.1f} GiB of float32 weights); the limit is {MAX_PARAMS / 1e6:,.0f}M")

    def param_estimate(self) -> int:
        """Parameters, from the config alone (the residual blocks' convs dominate; no allocation)."""
        block = 2 * 9 * self.width * self.inner_width * self.banks
        ends = 9 * self.width * self.channels * (1 + self.scale**2) + 25 * self.channels**2 * self.scale**2
        return self.blocks * block + ends

    @property
    def inner_width(self) -> int:
        return int(self.width * self.width_multiplier)

    @property
    def is_sparse(self) -> bool:
        return ARCHITECTURES[self.arch].sparse

    @property
    def task(self) -> str:
        return "sr" if self.scale > 1 else "restore"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["routing"] = self.routing.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if "routing" in data:
            data["routing"] = RoutingConfig.from_dict(data["routing"])
        return cls(**data)

    def with_(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[ModelConfig], nn.Module]
    sparse: bool
    description: str


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, sparse: bool, description: str) -> Callable:
    def wrap(build: Callable[[ModelConfig], nn.Module]) -> Callable[[ModelConfig], nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} registered twice")
        ARCHITECTURES[name] = Architecture(name, build, sparse, description)
        return build

    return wrap


def build_model(config: ModelConfig) -> nn.Module:
    return ARCHITECTURES[config.arch].build(config)


class ResidualBlock(nn.Module):
    """[conv C->C*wm, ReLU, conv C*wm->C] + identity. ``body.0`` / ``body.2`` as in the reference."""

    def __init__(self, first: nn.Module, second: nn.Module, shared_routing: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(first, nn.ReLU(inplace=True), second)
        self.shared_routing = shared_routing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shared_routing:
            return self.body(x) + x
        first, relu, second = self.body
        gates = first.route(x)  # both convs routed from the block input
        return second(relu(first(x, gates)), gates) + x


class WDSR(nn.Module):
    """The reference network: x-0.5, head conv, N residual blocks, tail conv, 5x5 skip conv, PixelShuffle, +0.5.

    Module names (``body.0``, ``body.{1..N}.body.{0,2}``, ``body.{N+1}``, ``skip.0``) match the reference so its
    checkpoints load. With scale 1 and equal in/out channels the reference has no skip conv: the skip is identity.
    """

    def __init__(self, config: ModelConfig, make_block: Callable[[int], ResidualBlock]) -> None:
        super().__init__()
        self.config = config
        c_in, c_out = config.channels, config.channels * config.scale**2
        layers: list[nn.Module] = [WNConv2d(c_in, config.width, 3, g_init=1.0)]
        layers += [make_block(i) for i in range(config.blocks)]
        layers.append(WNConv2d(config.width, c_out, 3, g_init=1.0))
        self.body = nn.Sequential(*layers)
        self.skip = nn.Sequential(WNConv2d(c_in, c_out, 5, g_init=1.0)) if c_in != c_out else nn.Sequential()
        self.shuf = nn.Sequential(nn.PixelShuffle(config.scale)) if config.scale > 1 else nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - IMAGE_MEAN
        x = self.body(x) + self.skip(x)
        return self.shuf(x) + IMAGE_MEAN


def _block_gains(config: ModelConfig) -> tuple[float, float]:
    """Reference init: g = 2.0 for a block's first conv, 1/sqrt(N) for its second."""
    return 2.0, 1.0 / math.sqrt(config.blocks)


@register_architecture("wdsr_nsr", sparse=True, description="WDSR with NSR sparse convs (the reference model)")
def build_wdsr_nsr(config: ModelConfig) -> nn.Module:
    g1, g2 = _block_gains(config)
    shared = config.routing.shared

    def make_block(_: int) -> ResidualBlock:
        first = SparseConv2d(
            config.width, config.inner_width, 3, config.banks, config.cardinality, config.routing, g_init=g1
        )
        second = SparseConv2d(
            config.inner_width, config.width, 3, config.banks, config.cardinality, config.routing,
            own_router=not shared, g_init=g2,
        )
        return ResidualBlock(first, second, shared_routing=shared)

    return WDSR(config, make_block)


@register_architecture("wdsr", sparse=False, description="WDSR with dense convs (the NSR baseline)")
def build_wdsr(config: ModelConfig) -> nn.Module:
    g1, g2 = _block_gains(config)

    def make_block(_: int) -> ResidualBlock:
        return ResidualBlock(
            WNConv2d(config.width, config.inner_width, 3, g_init=g1),
            WNConv2d(config.inner_width, config.width, 3, g_init=g2),
        )

    return WDSR(config, make_block)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Named configurations a user can ask for by id (`nsr-edge info edsr_nsr_x2`). Zoo models add trained weights.
PRESETS: dict[str, ModelConfig] = {
    # The reference README's "EDSR+NSR" configuration.
    **{
        f"edsr_nsr_x{s}": ModelConfig("wdsr_nsr", s, 3, 16, 64, 1.0, 4, 16)
        for s in (2, 3, 4)
    },
    # The reference code's defaults (WDSR-NSR, 16 blocks, C=32, wm=4, k=4, d=16).
    **{f"wdsr_nsr_x{s}": ModelConfig("wdsr_nsr", s, 3, 16, 32, 4.0, 4, 16) for s in (2, 3, 4)},
    **{f"wdsr_x{s}": ModelConfig("wdsr", s, 3, 16, 32, 4.0, 4, 16) for s in (2, 3, 4)},
    # Scale-1 restoration variants (denoising, JPEG deblocking): gray and colour.
    "wdsr_nsr_gray": ModelConfig("wdsr_nsr", 1, 1, 16, 32, 4.0, 4, 16),
    "wdsr_nsr_color": ModelConfig("wdsr_nsr", 1, 3, 16, 32, 4.0, 4, 16),
    "wdsr_gray": ModelConfig("wdsr", 1, 1, 16, 32, 4.0, 4, 16),
    "wdsr_color": ModelConfig("wdsr", 1, 3, 16, 32, 4.0, 4, 16),
}
