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


def cuda_unusable_reason() -> str | None:
    """None when a session asked for CUDA keeps the CUDA provider (a GPU, its driver, the CUDA libraries), else why."""
    if eps.CUDA in ort.get_available_providers():
        try:
            session = ort.InferenceSession(_identity_model(), providers=[eps.CUDA, eps.CPU])
        except Exception as exc:  # onnxruntime raises its own classes straight from C++
            return f"{type(exc).__name__}: {exc}"
        if eps.CUDA in session.get_providers():
            return None
    return eps.why_not_loaded(ort, eps.CUDA)


CUDA_UNUSABLE = cuda_unusable_reason()
CUDA_USABLE = CUDA_UNUSABLE is None
