"""INT8 through ONNX Runtime's own quantization tools, to compare with our block-wise INT8.

onnx-int8 ships the block-wise INT8 graph that core.onnx_graph writes directly (MatMulNBits with
8-bit weights; the tied embedding/head stored once). These are the alternatives the issue asks
to measure against it, made from the fp32 artifact by onnxruntime.quantization:

- dynamic: quantize_dynamic, per tensor or per channel: MatMulInteger-family kernels that
  quantize activations per run.
- static: quantize_static in QDQ format, activation ranges calibrated on validation tokens.

Their weights cannot share the tied matrix (the tools quantize each use separately), so their
files are larger; bench/quantization.py reports size, speed and agreement for all of them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .errors import GptuiError
from .onnx_export import META_QUANTIZATION, save_model

METHODS = ("dynamic", "dynamic-per-channel", "static")


def _head_as_initializer(model) -> None:
    """Replace the head's Transpose(wte) by a stored transposed copy, so the tools see a weight."""
    from onnx import numpy_helper

    graph = model.graph
    wte = next(i for i in graph.initializer if i.name == "transformer.wte.weight")
    node = next(n for n in graph.node if n.op_type == "Transpose" and n.input[0] == wte.name)
    head = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(wte).T), "lm_head.weight_t")
    graph.initializer.append(head)
    for consumer in graph.node:
        for i, name in enumerate(consumer.input):
            if name == node.output[0]:
                consumer.input[i] = head.name
    graph.node.remove(node)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader: one prefill per token window, empty past."""

    def __init__(self, model, windows: list[list[int]]):
        inputs = {i.name: i for i in model.graph.input}
        self.feeds = []
        for ids in windows:
            feed = {"input_ids": np.asarray([ids], np.int64), "past_length": np.zeros(1, np.int64),
                    "logits_to_keep": np.ones(1, np.int64)}
            for name, info in inputs.items():
                if name.startswith("past_") and name != "past_length":
                    dims = info.type.tensor_type.shape.dim
                    feed[name] = np.zeros((1, dims[1].dim_value, 0, dims[3].dim_value), np.float32)
            self.feeds.append(feed)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.feeds):
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self):
        self.position = 0


def quantize_with_ort(fp32_path: str | Path, out: str | Path, method: str,
                      calibration: list[list[int]] | None = None) -> Path:
    """Write an INT8 model made from the fp32 artifact by ONNX Runtime's `method`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if method not in METHODS:
        raise GptuiError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")
    if method == "static" and not calibration:
        raise GptuiError("static quantization needs calibration windows")
    model = onnx.load(str(fp32_path))
    _head_as_initializer(model)
    metadata = {p.key: p.value for p in model.metadata_props}
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(source))
        # shape inference stops at com.microsoft ops; every tensor the tools touch is float
        options = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
        if method.startswith("dynamic"):
            quantize_dynamic(str(source), str(target), op_types_to_quantize=["MatMul", "Gather"],
                             per_channel=method.endswith("per-channel"), weight_type=QuantType.QInt8,
                             extra_options=options)
        else:
            quantize_static(str(source), str(target), _Calibration(model, calibration),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Gather"], per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax,
                            # logits stay float: quantizing the model's output costs accuracy and time
                            extra_options={**options, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gather"]})
        quantized = onnx.load(str(target))
    del quantized.metadata_props[:]
    for key, value in {**metadata, "gptui.kind": "int8", META_QUANTIZATION: f"ort-{method}"}.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    save_model(quantized, out)
    return out
