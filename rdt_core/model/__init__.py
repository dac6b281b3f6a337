"""The recurrent-depth transformer (no Ray, no MLflow here)."""

from rdt_core.model.transformer import Block, RecurrentDepthTransformer, Rotary

__all__ = ["Block", "RecurrentDepthTransformer", "Rotary"]
