"""The recurrent-depth transformer: prelude -> core looped R times with input injection -> coda -> readout.

One forward pass to ``n_loops`` returns the answer logits after every loop, so accuracy at every inference
loop count (and later every halting rule) comes from a single pass instead of one pass per setting.

Design choices, and why:
- Rotary position embeddings: relative, so no learned table caps the query length (deeper queries than
  trained must still fit).
- Additive input injection: the prelude output ``e`` is added to the state before every loop, so the core
  never loses sight of the query however many loops it runs.
- Output projections of the core start at zero: at initialisation a loop is the identity plus injection,
  which keeps deep unrolls stable early in training.
- Tied readout over the entity rows of the embedding: the answer is always an entity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rdt_core.config import ModelConfig
from rdt_core.data.tokens import Vocabulary


class Rotary(nn.Module):
    """Rotary position embedding for a head size; the angle table grows on demand."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)  # (Dh/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate queries or keys x: (B, H, T, Dh) -> (B, H, T, Dh)."""
        length = x.shape[-2]
        angles = torch.outer(torch.arange(length, device=x.device).float(), self.inv_freq)  # (T, Dh/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x_even, x_odd = x[..., 0::2], x[..., 1::2]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
        return rotated.flatten(-2)


class Block(nn.Module):
    """A pre-norm transformer layer: causal self-attention with rotary positions, then an MLP."""

    def __init__(self, config: ModelConfig, rotary: Rotary, zero_init_output: bool):
        super().__init__()
        d_model = config.d_model
        self.n_heads = config.n_heads
        self.rotary = rotary
        self.attn_norm = nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.attn_out = nn.Linear(d_model, d_model, bias=False)
        self.mlp_norm = nn.RMSNorm(d_model)
        self.mlp_in = nn.Linear(d_model, config.mlp_ratio * d_model, bias=False)
        self.mlp_out = nn.Linear(config.mlp_ratio * d_model, d_model, bias=False)
        if zero_init_output:
            nn.init.zeros_(self.attn_out.weight)
            nn.init.zeros_(self.mlp_out.weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D), attn_mask: (B, 1, T, T) bool, True where attention is allowed."""
        batch, length, d_model = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.n_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        q, k = self.rotary(q), self.rotary(k)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, Dh)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, length, d_model))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x))))


class RecurrentDepthTransformer(nn.Module):
    """Embedding -> prelude -> core x R (input injection) -> coda -> norm -> tied entity readout."""

    def __init__(self, config: ModelConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        self.vocab = vocab
        rotary = Rotary(config.d_model // config.n_heads)
        self.embed = nn.Embedding(vocab.size, config.d_model)
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(config.d_model))
        self.prelude = nn.ModuleList(
            Block(config, rotary, zero_init_output=False) for _ in range(config.n_prelude_layers)
        )
        self.core = nn.ModuleList(
            Block(config, rotary, zero_init_output=True) for _ in range(config.n_core_layers)
        )
        self.coda = nn.ModuleList(
            Block(config, rotary, zero_init_output=False) for _ in range(config.n_coda_layers)
        )
        self.final_norm = nn.RMSNorm(config.d_model)

    def forward(self, tokens: torch.Tensor, n_loops: int, every_loop: bool = True) -> torch.Tensor:
        """Answer logits after every loop: tokens (B, T) -> logits (n_loops, B, n_entities).

        With ``every_loop=False`` only the last loop is read out: (1, B, n_entities), for training with
        a final-loop loss without paying for the readout of every loop.
        """
        attn_mask = self._attention_mask(tokens)
        injected = self.embed(tokens)  # (B, T, D)
        for layer in self.prelude:
            injected = layer(injected, attn_mask)
        state = torch.zeros_like(injected)  # (B, T, D)
        logits_by_loop = []
        for loop in range(1, n_loops + 1):
            state = state + injected
            for layer in self.core:
                state = layer(state, attn_mask)
            if every_loop or loop == n_loops:
                logits_by_loop.append(self._readout(state, attn_mask))
        return torch.stack(logits_by_loop)

    def _readout(self, state: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """Entity logits at the last position: state (B, T, D) -> (B, n_entities)."""
        for layer in self.coda:
            state = layer(state, attn_mask)
        last = self.final_norm(state[:, -1])  # (B, D)
        return last @ self.embed.weight[: self.vocab.n_entities].T

    def _attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal attention to real tokens; a padding position attends to itself so no row is empty."""
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()  # (T, T)
        is_real_key = (tokens != self.vocab.pad_token)[:, None, None, :]  # (B, 1, 1, T)
        diagonal = torch.eye(length, dtype=torch.bool, device=tokens.device)
        return (causal & is_real_key) | diagonal  # (B, 1, T, T)
