"""Whether ONNX Runtime's CUDA provider really loads here (onnxruntime-gpu lists it even where it cannot)."""

from __future__ import annotations

import onnxruntime as ort

from runtimes import ort_providers as eps


def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def cuda_usable() -> bool:
    """True when a session asked for CUDA keeps the CUDA provider (a GPU, its driver and the CUDA libraries)."""
    if eps.CUDA not in ort.get_available_providers():
        return False
    try:
        session = ort.InferenceSession(_identity_model(), providers=[eps.CUDA, eps.CPU])
    except Exception:  # onnxruntime raises its own classes straight from C++
        return False
    return eps.CUDA in session.get_providers()


CUDA_USABLE = cuda_usable()
