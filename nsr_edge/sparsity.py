"""Training-time pressure towards sparse (one-hot) routing, as options of `nsr-edge train`.

Options (``TrainConfig.sparsity``, all off by default, which is the reference recipe):
- ``temperature``: ``[start, end, until]`` anneals every router's softmax temperature geometrically from start to
  end over the first ``until`` fraction of the steps (meaningful with ``normalize_logits``: a free linear head
  otherwise shrinks its logits and cancels the temperature, see field notes).
- ``load_balance``: weight of a Switch-Transformer-style loss ``k * sum_i f_i * P_i`` (f_i: share of tiles whose top
  bank is i, P_i: mean probability of bank i), keeping every bank in use under hard routing.
- ``entropy``: weight of the mean routing entropy (minimising it sharpens the softmax).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .layers import SparseConv2d

KNOWN_OPTIONS = {"temperature", "load_balance", "entropy"}


class SparsityTrainer:
    def __init__(self, model: nn.Module, options: dict[str, Any], total_steps: int) -> None:
        unknown = set(options) - KNOWN_OPTIONS
        if unknown:
            raise UserError(f"unknown sparsity options {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
        self.options, self.total_steps = options, total_steps
        self.routers = [m for m in model.modules() if isinstance(m, SparseConv2d) and m.has_router]
        self.active = bool(self.routers) and bool(options)
        if options and not self.routers:
            raise UserError("sparsity options need a sparse (NSR) model")
        if "temperature" in options and any(m.routing.learnable_temperature for m in self.routers):
            raise UserError("a temperature schedule and a learnable temperature exclude each other")
        for m in self.routers:
            m.record_routing = self.active

    def before_step(self, step: int) -> None:
        schedule = self.options.get("temperature")
        if not schedule:
            return
        start, end, until = schedule
        t = min(1.0, step / max(1.0, until * self.total_steps))
        log_t = math.log(start) + t * (math.log(end) - math.log(start))
        for m in self.routers:
            m.log_temperature.fill_(log_t)

    def _probs(self) -> list[torch.Tensor]:
        return [torch.softmax(m.last_logits, dim=1) for m in self.routers if m.last_logits is not None]

    def aux_loss(self) -> torch.Tensor | float:
        if not self.active:
            return 0.0
        total: torch.Tensor | float = 0.0
        probs = self._probs()
        lb, ent = self.options.get("load_balance", 0.0), self.options.get("entropy", 0.0)
        for p in probs:  # (B, k, d)
            k = p.shape[1]
            if lb:
                share = torch.nn.functional.one_hot(p.argmax(1), k).float().mean((0, 1))  # (k,)
                mean_p = p.mean((0, 2))
                total = total + lb * k * (share * mean_p).sum() / len(probs)
            if ent:
                total = total + ent * -(p * p.clamp_min(1e-9).log()).sum(1).mean() / len(probs)
        return total

    def stats(self) -> dict[str, float]:
        if not self.active:
            return {}
        probs = self._probs()
        if not probs:
            return {}
        top1 = torch.cat([p.max(1).values.flatten() for p in probs])
        return {"routing_top1": round(float(top1.mean()), 4),
                "temperature": round(float(self.routers[0].temperature), 4)}
