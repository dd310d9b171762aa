"""Model configuration: one dataclass and named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import GptuiError


@dataclass
class GPTConfig:
    block_size: int = 1024  # context window in tokens (learned position embeddings)
    vocab_size: int = 50281  # tokenizer vocabulary; padded below for speed
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # residual stream width
    dropout: float = 0.0  # training-time dropout (0 for pretraining at this scale)
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has
    padded_vocab_size: int = 0  # derived: vocab_size rounded up to a multiple of 64

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise GptuiError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        # A multiple of 64 keeps the embedding and output matmuls on fast tensor-core shapes;
        # the extra rows are never sampled (generation masks them).
        self.padded_vocab_size = -(-self.vocab_size // 64) * 64

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("padded_vocab_size")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in dataclasses.fields(cls)} - {"padded_vocab_size"}
        unknown = set(d) - known - {"padded_vocab_size"}
        if unknown:
            raise GptuiError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied output head counted once)."""
        d, L, V = self.n_embd, self.n_layer, self.padded_vocab_size
        per_block = 12 * d * d + (9 * d if self.bias else 0) + (4 * d if self.bias else 2 * d)  # linears + 2 LNs
        total = L * per_block + V * d + self.block_size * d + (2 * d if self.bias else d)
        if non_embedding:
            total -= V * d + self.block_size * d
        return total


PRESETS: dict[str, dict] = {
    # For tests: builds and runs in milliseconds on a CPU.
    "tiny": dict(block_size=64, n_layer=2, n_head=2, n_embd=32),
    # The shipped code model: ~30M parameters, fast on a 2-core CPU.
    "small": dict(block_size=1024, n_layer=6, n_head=6, n_embd=384),
    # GPT-2 124M: the size the throughput benchmarks and well-known reproductions use.
    "gpt2": dict(block_size=1024, n_layer=12, n_head=12, n_embd=768),
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise GptuiError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return GPTConfig(**{**PRESETS[name], **overrides})
