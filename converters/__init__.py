"""Conversion targets (one module each) behind one interface: see `base.py` (protocol, registry, recipes) and
`pipeline.py` (the stages every target shares). Targets are imported on first use by `base.get_target`."""

from .base import RECIPES, TARGET_MODULES, Recipe, get_recipe, get_target, target_names

__all__ = ["RECIPES", "TARGET_MODULES", "Recipe", "get_recipe", "get_target", "target_names"]
