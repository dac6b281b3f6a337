"""K replicas of one architecture as one model, for training K models in one vectorised pass.

Why: every claim needs several seeds, and a small model leaves even a CPU core under-used.

How: the K plain models are fused into one :class:`StackedTransformer` whose every parameter holds the
K replicas' along a leading dimension. Its forward is the plain model's own code
(``RecurrentDepthTransformer.forward``) on a batch of K * B queries, replica-major: the layers with
weights (linear, RMS norm, embedding, tied readout) split the batch into K slices and apply each
replica's weights with one batched matmul; the rest (attention, activations, injection) does not care
which replica a row belongs to. A hand-batched layer rather than ``torch.func.vmap``: vmap has no
batching rule for CPU attention and falls back to a loop over replicas.

Replicas share no weight, so with a loss that is the sum of the replicas' losses each replica's slice of
a gradient is its own, and one elementwise optimizer (AdamW) over the stacked tensors is K optimizers.
Only gradient clipping looks across a whole gradient: :func:`clip_per_replica` clips each replica alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rdt_core.model.transformer import RecurrentDepthTransformer


class StackedLinear(nn.Module):
    """K linear maps without bias (the model has none), replica k applied to the k-th of K equal slices
    of the batch."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        if any(layer.bias is not None for layer in layers):
            raise TypeError("a linear layer with a bias: StackedLinear would drop it")
        self.weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (K, out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K * B, ..., in) replica-major -> (K * B, ..., out)."""
        n_replicas, _, d_in = self.weight.shape
        flat = x.reshape(n_replicas, -1, d_in)  # (K, N, in)
        out = torch.bmm(flat, self.weight.transpose(1, 2))  # (K, N, out)
        return out.reshape(*x.shape[:-1], -1)


class StackedRMSNorm(nn.Module):
    """K RMS norms over the last dimension, each with its replica's gain."""

    def __init__(self, norms: list[nn.RMSNorm]):
        super().__init__()
        self.eps = norms[0].eps
        self.weight = nn.Parameter(torch.stack([norm.weight.detach() for norm in norms]))  # (K, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (K * B, ..., D) replica-major -> same shape."""
        n_replicas, d_model = self.weight.shape
        flat = x.reshape(n_replicas, -1, d_model)  # (K, N, D)
        return (F.rms_norm(flat, (d_model,), eps=self.eps) * self.weight[:, None]).reshape(x.shape)


class StackedEmbedding(nn.Module):
    """K embedding tables, looked up as one table of K * V rows by offsetting each replica's tokens."""

    def __init__(self, embeddings: list[nn.Embedding]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([embedding.weight.detach() for embedding in embeddings]))  # (K, V, D)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (K * B, T) replica-major -> (K * B, T, D)."""
        n_replicas, vocab_size, d_model = self.weight.shape
        offsets = torch.arange(n_replicas, device=tokens.device)[:, None] * vocab_size  # (K, 1)
        rows = tokens.reshape(n_replicas, -1) + offsets  # (K, B * T)
        return F.embedding(rows, self.weight.reshape(-1, d_model)).reshape(*tokens.shape, d_model)


STACKED_LAYERS = {nn.Linear: StackedLinear, nn.RMSNorm: StackedRMSNorm, nn.Embedding: StackedEmbedding}


class StackedTransformer(RecurrentDepthTransformer):
    """K replicas of one architecture as one model: the plain model's forward on (K * B, T) tokens.

    Its ``state_dict`` has the plain model's keys, each tensor with a leading K: ``replica_state`` takes
    one replica's out for a plain model.
    """

    def __init__(self, models: list[RecurrentDepthTransformer]):
        first = models[0]
        with torch.random.fork_rng(devices=[]):  # its own initial weights are replaced: leave the seed's stream be
            super().__init__(first.config, first.vocab, n_core_groups=len(first.core))
        self.n_replicas = len(models)
        for name, module in list(self.named_modules()):
            if type(module) in STACKED_LAYERS:
                replicas = [model.get_submodule(name) for model in models]
                self.set_submodule(name, STACKED_LAYERS[type(module)](replicas))
        unstacked = [name for name, p in self.named_parameters() if p.shape[:1] != (self.n_replicas,)]
        if unstacked:  # a layer type added to the model but not here would silently be shared
            raise TypeError(f"parameters with no stacked layer: {unstacked}")

    def unembed(self, read: torch.Tensor) -> torch.Tensor:
        """As ``RecurrentDepthTransformer.unembed``, with each replica's tied embedding:
        read (K * B, [T,] D), replica-major -> (K * B, [T,] n_entities)."""
        entity_rows = self.embed.weight[:, : self.vocab.n_entities]  # (K, E, D)
        flat = read.reshape(self.n_replicas, -1, read.shape[-1])  # (K, N, D)
        return torch.bmm(flat, entity_rows.transpose(1, 2)).reshape(*read.shape[:-1], -1)

    def replica_state(self, replica: int) -> dict[str, torch.Tensor]:
        """One replica's weights, under the plain model's keys."""
        return {name: tensor[replica] for name, tensor in self.state_dict().items()}


@torch.no_grad()
def clip_per_replica(parameters: list[nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` for each replica alone: the norm over its slice of every gradient."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(grad.flatten(1), dim=1) for grad in grads])  # (P, K)
    total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # (K,)
    for grad in grads:
        grad.mul_(scale.view(-1, *[1] * (grad.dim() - 1)))
