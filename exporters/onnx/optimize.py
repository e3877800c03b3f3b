"""Fast-path graph transforms: ONNX Runtime's transformer fusion and fp16 conversion.

The fused file uses ONNX Runtime contrib ops (Attention, SkipLayerNormalization,
BiasGelu): it runs on ONNX Runtime only, and starting a session on it does not
redo the fusion. The exported graph must come from `exporters.fusable`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import onnx

from ..errors import ExportError

# Ops kept in fp32 (with casts around them). ONNX Runtime's fused SkipLayerNormalization and
# Attention kernels already accumulate their statistics and softmax sums in fp32 for fp16 data.
FP16_KEEP_FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMax"]


@dataclass(frozen=True)
class FusionReport:
    attention: int
    gelu: int
    skip_layer_norm: int
    expected_blocks: int

    @property
    def complete(self) -> bool:
        n = self.expected_blocks
        # Per block: its attention, its GELU, and the residual+LayerNorm pairs (norm2 of every block,
        # norm1 of every block but the first, whose input is no residual, plus the final norm).
        return self.attention == n and self.gelu == n and self.skip_layer_norm == 2 * n

    def line(self) -> str:
        n = self.expected_blocks
        return (
            f"fused Attention {self.attention}/{n}, GELU {self.gelu}/{n}, "
            f"SkipLayerNormalization {self.skip_layer_norm}/{2 * n}"
        )


def _ort_optimizer(proto: onnx.ModelProto, num_heads: int, hidden_size: int):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    options = FusionOptions("vit")
    model = BertOnnxModel(proto, num_heads=num_heads, hidden_size=hidden_size)
    logging.disable(logging.WARNING)  # the optimizer logs every pass at INFO through its own handler
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model.optimize(options, add_dynamic_axes=False)
            model.topological_sort()
            stats = model.get_fused_operator_statistics()
    finally:
        logging.disable(logging.NOTSET)
    return model, stats


def fuse_for_onnxruntime(proto: onnx.ModelProto, num_heads: int, hidden_size: int, blocks: int):
    """Run ONNX Runtime's ViT fusions; raise unless every block's attention, GELU and skip-LN fused."""
    model, stats = _ort_optimizer(proto, num_heads, hidden_size)
    report = FusionReport(
        attention=stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0),
        gelu=sum(stats.get(k, 0) for k in ("Gelu", "BiasGelu", "FastGelu")),
        skip_layer_norm=stats.get("SkipLayerNormalization", 0),
        expected_blocks=blocks,
    )
    if not report.complete:
        raise ExportError(f"ONNX Runtime fusion is incomplete: {report.line()}")
    proto = model.model
    if not any(op.domain == "com.microsoft" for op in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return proto, report


def convert_to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and compute in fp16, inputs and outputs kept float32, LayerNorm/Softmax kept fp32."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(proto)
    logging.disable(logging.WARNING)
    try:
        model.convert_float_to_float16(keep_io_types=True, op_block_list=FP16_KEEP_FP32_OPS)
        model.topological_sort()
    finally:
        logging.disable(logging.NOTSET)
    return model.model
