"""The recurrent-depth transformer and its hook points (no Ray, no MLflow here)."""

from rdt_core.model.hooks import ActivationCache, PositionPatch, UnknownHookPoint
from rdt_core.model.transformer import Block, RecurrentDepthTransformer, Rotary, build_model

__all__ = [
    "ActivationCache", "Block", "PositionPatch", "RecurrentDepthTransformer", "Rotary", "UnknownHookPoint", "build_model",
]
