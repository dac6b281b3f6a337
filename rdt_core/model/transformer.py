"""The recurrent-depth transformer: prelude -> core looped R times with input injection -> coda -> readout.

One forward pass to ``n_loops`` returns the answer logits after every loop, so accuracy at every inference
loop count (and later every halting rule) comes from a single pass instead of one pass per setting.

Design choices, and why:
- Rotary position embeddings: relative, so no learned table caps the query length (deeper queries than
  trained must still fit).
- Input injection: the prelude output ``e`` enters the state before every loop, so the core never loses
  sight of the query however many loops it runs. Added by default (``model.injection: add``), which lets
  the state's norm grow with the loops; ``norm`` RMS-normalises the state before adding ``e`` (the state
  entering a loop stays bounded), ``concat`` maps [state; e] through a learnt adapter (as recurrent-depth
  language models do), initialised to their sum.
- Output projections of the core start at zero: at initialisation a loop is the identity plus injection,
  which keeps deep unrolls stable early in training.
- Tied readout over the entity rows of the embedding: the answer is always an entity.

The paper's own models (OSU-NLP-Group/Loop-Think-Generalize: GPT-2 blocks looped R times) are options of
the same class, every one off by default: ``model.block: gpt2`` (LayerNorm and biases, tanh GELU,
dropout, the paper's initialisation), ``positions: learned | sinusoidal | none`` in place of rotary,
``injection: none`` (the input enters once, before the first loop), ``zero_init_output: false`` and
``readout: vocabulary`` (argmax over every token). tests/unit/test_gpt2_reference.py holds them to a loop
of transformers' own GPT2Block, logit for logit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rdt_core.config import ExperimentConfig, ModelConfig
from rdt_core.data.tokens import Vocabulary
from rdt_core.model.hooks import Hook, check_hook_points, run_hook


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


def drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout while training, where there is any: the default model has none and pays nothing for it."""
    return F.dropout(x, p) if training and p else x


def sinusoidal_table(length: int, d_model: int) -> torch.Tensor:
    """The fixed sine/cosine position table of the original transformer: -> (length, d_model)."""
    position = torch.arange(length).float()[:, None]  # (T, 1)
    frequency = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))  # (D/2,)
    table = torch.zeros(length, d_model)
    table[:, 0::2], table[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
    return table


class Block(nn.Module):
    """A pre-norm transformer layer: causal self-attention (rotary positions where ``rotary`` is given),
    then an MLP. ``model.block: rdt`` has RMS norms, no biases and exact GELU; ``gpt2`` is GPT-2's block:
    LayerNorm (eps 1e-5), biases, tanh GELU, dropout on attention and on both residual branches, and the
    initialisation the paper's models start from: transformers' GPT2Block built on its own (as the paper's
    RecurrentGPT2Block builds it) draws its Conv1D weights from normal 0.02 with zero biases and never
    applies GPT2Model's 1 / sqrt(2 x layers) scaling of the output projections."""

    def __init__(self, config: ModelConfig, rotary: Rotary | None, zero_init_output: bool):
        super().__init__()
        d_model, gpt2 = config.d_model, config.block == "gpt2"
        self.n_heads = config.n_heads
        self.rotary = rotary
        self.dropout = config.dropout
        self.gelu = "tanh" if gpt2 else "none"
        self.attn_norm = nn.LayerNorm(d_model, eps=1e-5) if gpt2 else nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=gpt2)
        self.attn_out = nn.Linear(d_model, d_model, bias=gpt2)
        self.mlp_norm = nn.LayerNorm(d_model, eps=1e-5) if gpt2 else nn.RMSNorm(d_model)
        self.mlp_in = nn.Linear(d_model, config.mlp_ratio * d_model, bias=gpt2)
        self.mlp_out = nn.Linear(config.mlp_ratio * d_model, d_model, bias=gpt2)
        if gpt2:
            for layer in (self.qkv, self.attn_out, self.mlp_in, self.mlp_out):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        if zero_init_output:
            nn.init.zeros_(self.attn_out.weight)
            nn.init.zeros_(self.mlp_out.weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D), attn_mask: (B, 1, T, T) bool, True where attention is allowed."""
        batch, length, d_model = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.n_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, Dh)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        x = x + drop(self.attn_out(attended.transpose(1, 2).reshape(batch, length, d_model)), self.dropout, self.training)
        return x + drop(self.mlp_out(F.gelu(self.mlp_in(self.mlp_norm(x)), approximate=self.gelu)), self.dropout, self.training)


class RecurrentDepthTransformer(nn.Module):
    """Embedding -> prelude -> core x R (input injection) -> coda -> norm -> tied entity readout.

    ``n_core_groups`` is 1 for the looped model: every loop applies the same core. The baselines have
    ``n_core_groups = R`` distinct cores, loop t applying group t: ``unshared`` re-injects the input before
    each (the looped computation without weight sharing), ``vanilla`` only before the first (a plain
    transformer of depth R). Neither can run more loops than it has groups, so its readouts after loop R
    repeat the last one.
    """

    def __init__(self, config: ModelConfig, vocab: Vocabulary, n_core_groups: int = 1):
        super().__init__()
        self.config = config
        self.vocab = vocab
        gpt2 = config.block == "gpt2"
        rotary = Rotary(config.d_model // config.n_heads) if config.positions == "rope" else None
        self.embed = nn.Embedding(vocab.size, config.d_model)
        # gpt2: the paper's plain nn.Embedding tables, normal with std 1 (not GPT2Model's 0.02)
        nn.init.normal_(self.embed.weight, std=1.0 if gpt2 else 1.0 / math.sqrt(config.d_model))
        self.position_embed = None
        if config.positions == "learned":
            self.position_embed = nn.Embedding(config.n_positions, config.d_model)
            nn.init.normal_(self.position_embed.weight, std=1.0 if gpt2 else 1.0 / math.sqrt(config.d_model))
        elif config.positions == "sinusoidal":
            self.register_buffer("position_table", sinusoidal_table(config.n_positions, config.d_model), persistent=False)
        self.prelude = nn.ModuleList(
            Block(config, rotary, zero_init_output=False) for _ in range(config.n_prelude_layers)
        )
        self.core = nn.ModuleList(
            nn.ModuleList(Block(config, rotary, config.zero_init_output) for _ in range(config.n_core_layers))
            for _ in range(n_core_groups)
        )
        self.coda = nn.ModuleList(
            Block(config, rotary, zero_init_output=False) for _ in range(config.n_coda_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model, eps=1e-5) if gpt2 else nn.RMSNorm(config.d_model)
        self.reinjects = config.architecture != "vanilla" and config.injection != "none"
        self.state_norm = nn.RMSNorm(config.d_model) if config.injection == "norm" else None
        self.adapter = None
        if config.injection == "concat":
            self.adapter = nn.Linear(2 * config.d_model, config.d_model, bias=False)
            with torch.no_grad():  # [I | I]: the sum of state and input, as additive injection starts
                self.adapter.weight.copy_(torch.eye(config.d_model).repeat(1, 2))

    @property
    def is_looped(self) -> bool:
        return len(self.core) == 1

    def forward(
        self,
        tokens: torch.Tensor,
        n_loops: int,
        every_loop: bool = True,
        hook: Hook | None = None,
        backprop_loops: int | None = None,
    ) -> torch.Tensor:
        """Answer logits after every loop: tokens (B, T) -> logits (n_loops, B, n_entities).

        ``every_loop=False`` reads out the last loop only: (1, B, n_entities), for a final-loop loss
        without paying for every readout. ``backprop_loops=k`` detaches the state before the last k
        loops (truncated backpropagation through depth). ``hook`` sees every named hook point
        (``hook_names``); one that declares the points it acts on is refused if any is not among them.
        """
        check_hook_points(hook, self.hook_names(n_loops, every_loop) if hook is not None else [])
        injected, attn_mask = self.encode(tokens, hook)
        state = torch.zeros_like(injected)  # (B, T, D)
        logits_by_loop = []
        for loop in range(1, n_loops + 1):
            if backprop_loops is not None and loop == n_loops - backprop_loops + 1:
                state = state.detach()
            if self.is_looped or loop <= len(self.core):
                state = self.step(state, injected, attn_mask, loop, hook)
            else:  # vanilla past its depth: no computation, but the hook point still exists
                state = run_hook(hook, f"loop.{loop}.resid_post", state)
            if every_loop or loop == n_loops:
                logits_by_loop.append(self.readout(state, attn_mask, loop, hook))
        return torch.stack(logits_by_loop)

    def hook_names(self, n_loops: int, every_loop: bool = True) -> list[str]:
        """The hook points a forward to ``n_loops`` passes, in the order it passes them (the module
        docstring of ``rdt_core.model.hooks`` says what each holds)."""
        names = ["embed", *(f"prelude.{index}" for index in range(len(self.prelude)))]
        for loop in range(1, n_loops + 1):
            if self.is_looped or loop <= len(self.core):
                if self.reinjects or loop == 1:
                    names.append(f"loop.{loop}.injected")
                names.append(f"loop.{loop}.resid_pre")
            names.append(f"loop.{loop}.resid_post")
            if every_loop or loop == n_loops:
                names += [f"coda.{loop}.{index}" for index in range(len(self.coda))]
        return names

    def encode(self, tokens: torch.Tensor, hook: Hook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The injected input and the attention mask: tokens (B, T) -> (B, T, D), (B, 1, T, T)."""
        attn_mask = self.attention_mask(tokens)
        embedded = self.embed(tokens)  # (B, T, D)
        if self.position_embed is not None:
            embedded = embedded + self.position_embed.weight[: tokens.shape[1]]
        elif self.config.positions == "sinusoidal":
            embedded = embedded + self.position_table[: tokens.shape[1]]
        embedded = drop(embedded, self.config.dropout, self.training)
        injected = run_hook(hook, "embed", embedded)
        for index, layer in enumerate(self.prelude):
            injected = run_hook(hook, f"prelude.{index}", layer(injected, attn_mask))
        return injected, attn_mask

    def step(
        self,
        state: torch.Tensor,
        injected: torch.Tensor,
        attn_mask: torch.Tensor,
        loop: int,
        hook: Hook | None = None,
    ) -> torch.Tensor:
        """Loop ``loop`` (1-based): state (B, T, D) -> state (B, T, D)."""
        if self.reinjects or loop == 1:
            state = self.inject(state, run_hook(hook, f"loop.{loop}.injected", injected))
        state = run_hook(hook, f"loop.{loop}.resid_pre", state)
        for layer in self.core[0 if self.is_looped else loop - 1]:
            state = layer(state, attn_mask)
        return run_hook(hook, f"loop.{loop}.resid_post", state)

    def inject(self, state: torch.Tensor, injected: torch.Tensor) -> torch.Tensor:
        """The state a loop starts from: state, injected (B, T, D) -> (B, T, D)."""
        if self.adapter is not None:
            return self.adapter(torch.cat([state, injected], dim=-1))
        if self.state_norm is not None:
            return self.state_norm(state) + injected
        return state + injected

    def readout(
        self,
        state: torch.Tensor,
        attn_mask: torch.Tensor,
        loop: int = 0,
        hook: Hook | None = None,
        all_positions: bool = False,
    ) -> torch.Tensor:
        """Answer logits at the last position: state (B, T, D) -> (B, n_answers); with
        ``all_positions``, at every position (B, T, n_answers), as the logit lens reads them. n_answers is
        the entities (``model.readout: entities``), or the whole vocabulary, whose first rows they are."""
        for index, layer in enumerate(self.coda):
            state = run_hook(hook, f"coda.{loop}.{index}", layer(state, attn_mask))
        read = state if all_positions else state[:, -1]  # (B, T, D) or (B, D)
        return self.unembed(self.final_norm(read))

    def unembed(self, read: torch.Tensor) -> torch.Tensor:
        """Answer logits through the tied embedding: read (..., D) -> (..., n_answers)."""
        rows = self.vocab.n_entities if self.config.readout == "entities" else self.vocab.size
        return read @ self.embed.weight[:rows].T

    def attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal attention to real tokens; a padding position attends to itself so no row is empty."""
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()  # (T, T)
        is_real_key = (tokens != self.vocab.pad_token)[:, None, None, :]  # (B, 1, 1, T)
        diagonal = torch.eye(length, dtype=torch.bool, device=tokens.device)
        return (causal & is_real_key) | diagonal  # (B, 1, T, T)


def build_model(config: ExperimentConfig, vocab: Vocabulary) -> RecurrentDepthTransformer:
    """The looped model, or a baseline (vanilla, unshared) with as many distinct cores as training loops."""
    groups = 1 if config.model.architecture == "looped" else config.train.train_loops
    return RecurrentDepthTransformer(config.model, vocab, n_core_groups=groups)
