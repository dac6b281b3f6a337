"""The recurrent-depth transformer and its hook points (no Ray, no MLflow here)."""

from rdt_core.model.hooks import ActivationCache, patch_position
from rdt_core.model.transformer import Block, RecurrentDepthTransformer, Rotary, build_model

__all__ = ["ActivationCache", "Block", "RecurrentDepthTransformer", "Rotary", "build_model", "patch_position"]
