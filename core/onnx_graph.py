"""Build the ONNX graph of our GPT directly from its weights, with the KV cache as inputs/outputs.

We write the graph by hand rather than tracing the PyTorch module: the result is byte-for-byte
deterministic, and it can use ONNX Runtime's fused CPU kernels from the start instead of hoping
a pattern matcher recognises the exporter's output. Those kernels (com.microsoft domain):

- GroupQueryAttention (with kv_num_heads = num_heads, i.e. plain multi-head attention): causal
  attention over past + new keys that appends to the cache itself. When the caller binds the
  same buffer as past and present it writes the new keys in place, so a decode step copies
  nothing; with separate tensors it behaves like the usual past/present export.
- SkipLayerNormalization: residual add + bias + LayerNorm in one pass.
- FastGelu: bias + GPT-2's tanh GELU.
- MatMulNBits (INT8 variant): block-wise INT8 weights; with accuracy_level 4 the activations
  are quantized on the fly and the product runs on VNNI int8 dot products.

Interface (every dimension dynamic except the model's own sizes):
  input_ids       int64 (batch, sequence)
  past_length     int64 (1,): tokens already in the cache (positions start here)
  logits_to_keep  int64 (1,): logits for the last K positions (1 for generation, sequence for loss)
  past_key_<i>, past_value_<i>     float (batch, n_head, past_sequence, head_dim)
  logits          float (batch, K, padded_vocab)
  present_key_<i>, present_value_<i>  float (batch, n_head, past_length + sequence, head_dim),
                  or the past buffer itself when bound to the same memory
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .config import GPTConfig
from .errors import GptuiError

OPSET = 21
# The file format version written: onnx's newest (14 in onnx 1.23) is newer than ONNX Runtime
# releases of a year ago accept (1.30 stops at 11). Opset 21 needs IR 10, which ORT >= 1.18 reads.
IR_VERSION = 10
MS_DOMAIN = "com.microsoft"
INT8_BLOCK = 128  # MatMulNBits block along the input dimension (measured fastest at width 384)


def _largest_block(k: int) -> int:
    """The largest power-of-two block (16..INT8_BLOCK) dividing k."""
    block = INT8_BLOCK
    while block > 16 and k % block:
        block //= 2
    if k % block:
        raise GptuiError(f"INT8 ONNX needs layer widths divisible by 16 (got {k})")
    return block


def quantize_blockwise(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per block of `block` inputs: weight (out, in) -> (uint8 (out, in), scales (out, in/block)).

    Stored with MatMulNBits' default zero point of 128, so q = round(w / scale) + 128.
    """
    out_features, in_features = weight.shape
    blocks = weight.reshape(out_features, in_features // block, block)
    scales = np.abs(blocks).max(axis=-1) / 127.0
    scales = np.where(scales == 0, 1.0, scales).astype(np.float32)
    q = np.clip(np.rint(blocks / scales[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8).reshape(out_features, in_features), scales


class _GraphBuilder:
    def __init__(self, state: dict[str, np.ndarray], config: GPTConfig, quantize: bool):
        self.state = state
        self.config = config
        self.quantize = quantize
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}

    def init(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:  # constants are asked for more than once
            self.initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs) -> list[str]:
        name = f"{op}_{len(self.nodes)}"
        if isinstance(outputs, int):
            outputs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def weight(self, name: str) -> np.ndarray:
        if name not in self.state and name.endswith(".bias"):
            # bias=False models: the fused kernels take a bias, and a zero one computes the same
            rows = self.state[name.removesuffix("bias") + "weight"].shape[0]
            return np.zeros(rows, np.float32)
        return self.state[name]

    def linear(self, x: str, prefix: str, with_bias: bool) -> str:
        """x @ W.T (+ b): fp32 MatMul over the transposed weight, or MatMulNBits over INT8 blocks."""
        w = self.weight(f"{prefix}.weight")  # (out, in)
        bias = [self.init(f"{prefix}.bias", self.weight(f"{prefix}.bias"))] if with_bias else []
        if not self.quantize:
            y = self.node("MatMul", [x, self.init(f"{prefix}.weight", w.T)])[0]
            return self.node("Add", [y, bias[0]])[0] if bias else y
        block = _largest_block(w.shape[1])
        q, scales = quantize_blockwise(w, block)
        out_features, in_features = w.shape
        q_name = self.init(f"{prefix}.weight_q", q.reshape(out_features, in_features // block, block))
        s_name = self.init(f"{prefix}.weight_scales", scales)
        return self.node("MatMulNBits", [x, q_name, s_name, "", "", *bias], domain=MS_DOMAIN,
                         K=in_features, N=out_features, bits=8, block_size=block, accuracy_level=4)[0]

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.node("LayerNormalization", [x, self.init(f"{prefix}.weight", self.weight(f"{prefix}.weight")),
                                                self.init(f"{prefix}.bias", self.weight(f"{prefix}.bias"))],
                         axis=-1, epsilon=1e-5)[0]

    def skip_layer_norm(self, x: str, skip: str, bias: str, prefix: str) -> tuple[str, str]:
        """(LayerNorm(x + skip + bias), x + skip + bias): the residual add fused into the next norm."""
        out = self.node("SkipLayerNormalization", [
            x, skip, self.init(f"{prefix}.weight", self.weight(f"{prefix}.weight")),
            self.init(f"{prefix}.bias", self.weight(f"{prefix}.bias")), bias,
        ], outputs=[f"{prefix}.out", "", "", f"{prefix}.residual"], domain=MS_DOMAIN, epsilon=1e-5)
        return out[0], out[3]

    def embedding(self, ids: str) -> tuple[str, str]:
        """(token embeddings (B, T, C), the initializer the output head shares with them).

        fp32 keeps wte once as (vocab, C): Gather reads rows; the head multiplies by its
        transpose, which ONNX Runtime folds at load time (the file holds the matrix once).
        INT8 keeps the INT8 blocks once: GatherBlockQuantized dequantizes the gathered rows and
        MatMulNBits reads the same uint8 tensor as the head's weight.
        """
        wte = self.weight("transformer.wte.weight")
        vocab, C = wte.shape
        if not self.quantize:
            table = self.init("transformer.wte.weight", wte)
            return self.node("Gather", [table, ids], axis=0)[0], table
        block = _largest_block(C)
        q, scales = quantize_blockwise(wte, block)
        table = self.init("transformer.wte.weight_q", q.reshape(vocab, C // block, block))
        self.init("transformer.wte.weight_scales", scales)
        gather_scales = self.init("transformer.wte.gather_scales", scales[..., None])  # rank must match data
        rows = self.node("GatherBlockQuantized", [table, ids, gather_scales], domain=MS_DOMAIN,
                         bits=8, block_size=block, gather_axis=0, quantize_axis=2)[0]  # (B, T, C/block, block)
        return self.node("Reshape", [rows, self.init("embedding_shape", np.array([0, 0, C], np.int64))])[0], table

    def head(self, x: str, table: str) -> str:
        wte = self.weight("transformer.wte.weight")
        vocab, C = wte.shape
        if not self.quantize:
            return self.node("MatMul", [x, self.node("Transpose", [table], perm=[1, 0])[0]])[0]
        return self.node("MatMulNBits", [x, table, "transformer.wte.weight_scales"], domain=MS_DOMAIN,
                         K=C, N=vocab, bits=8, block_size=_largest_block(C), accuracy_level=4)[0]

    def build(self) -> onnx.ModelProto:
        cfg = self.config
        L, nh, hs, C = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_embd
        # Positions past_length .. past_length + T - 1, and GroupQueryAttention's length inputs.
        # Every helper value is 1-D: ONNX Runtime's constant sharing can merge a scalar constant
        # with a one-element 1-D one and break the shapes of whatever follows.
        zero, one = self.init("const_zero", np.array([0], np.int64)), self.init("const_one", np.array([1], np.int64))
        seq = self.node("Shape", ["input_ids"], start=1, end=2)[0]  # (1,) T
        batch = self.node("Shape", ["input_ids"], start=0, end=1)[0]  # (1,) B
        total = self.node("Add", ["past_length", seq])[0]  # (1,)
        total_i32 = self.node("Cast", [total], to=TensorProto.INT32)[0]
        seqlens_k = self.node("Expand", [self.node("Cast", [self.node("Sub", [total, one])[0]], to=TensorProto.INT32)[0],
                                         batch])[0]  # (B,) total - 1 for every row
        total_scalar = self.node("Squeeze", [total_i32, zero])[0]

        tokens, table = self.embedding("input_ids")
        wpe = self.init("transformer.wpe.weight", self.weight("transformer.wpe.weight"))
        positions = self.node("Slice", [wpe, "past_length", total, zero])[0]  # (T, C)
        x = self.node("Add", [tokens, positions])[0]  # (B, T, C)
        h = self.layer_norm(x, "transformer.h.0.ln_1")
        for i in range(L):
            p = f"transformer.h.{i}"
            qkv = self.linear(h, f"{p}.attn.c_attn", with_bias=True)  # (B, T, 3C)
            attn = self.node(
                "GroupQueryAttention",
                [qkv, "", "", f"past_key_{i}", f"past_value_{i}", seqlens_k, total_scalar],
                outputs=[f"{p}.attn.out", f"present_key_{i}", f"present_value_{i}"],
                domain=MS_DOMAIN, num_heads=nh, kv_num_heads=nh,
            )[0]  # (B, T, C)
            attn = self.linear(attn, f"{p}.attn.c_proj", with_bias=False)
            attn_bias = self.init(f"{p}.attn.c_proj.bias", self.weight(f"{p}.attn.c_proj.bias"))
            h, x = self.skip_layer_norm(attn, x, attn_bias, f"{p}.ln_2")
            up = self.linear(h, f"{p}.mlp.c_fc", with_bias=False)
            up = self.node("FastGelu", [up, self.init(f"{p}.mlp.c_fc.bias", self.weight(f"{p}.mlp.c_fc.bias"))],
                           domain=MS_DOMAIN)[0]
            down = self.linear(up, f"{p}.mlp.c_proj", with_bias=False)
            mlp_bias = self.init(f"{p}.mlp.c_proj.bias", self.weight(f"{p}.mlp.c_proj.bias"))
            h, x = self.skip_layer_norm(down, x, mlp_bias, f"transformer.h.{i + 1}.ln_1" if i + 1 < L else "transformer.ln_f")

        keep = self.node("Neg", ["logits_to_keep"])[0]
        h = self.node("Slice", [h, keep, self.init("const_slice_end", np.array([np.iinfo(np.int64).max], np.int64)),
                                one])[0]  # (B, K, C)
        self.head(h, table)
        self.nodes[-1].output[0] = "logits"

        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("past_length", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "kept", cfg.padded_vocab_size])]
        for i in range(L):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", TensorProto.FLOAT,
                                                            ["batch", nh, "past_sequence", hs]))
                outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", TensorProto.FLOAT,
                                                             ["batch", nh, "total_sequence", hs]))
        graph = helper.make_graph(self.nodes, "gptui", inputs, outputs, list(self.initializers.values()))
        return helper.make_model(graph, producer_name="gptui", ir_version=IR_VERSION, opset_imports=[
            helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])


def build_model(state: dict[str, np.ndarray], config: GPTConfig, quantize: bool = False) -> onnx.ModelProto:
    """The ONNX model for fp32 weights `state` (our parameter names, float32 numpy arrays).

    quantize=True stores every linear layer and the tied embedding/head as block-wise INT8.
    """
    if sum(v.nbytes for v in state.values()) >= 2**31 - 2**26:
        # one protobuf holds at most 2 GB; bigger models would need ONNX external data files
        raise GptuiError("models over 2 GB of fp32 weights are not supported by the ONNX export")
    return _GraphBuilder(state, config, quantize).build()
