"""Graph checks: which kernels OpenVINO and ONNX Runtime actually run (`ov_layers`), and ONNX Runtime's fusions
against the plain ops (`ort_fusions`)."""
