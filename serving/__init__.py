"""Serving an export: an Open Inference Protocol (KServe V2) server over the kit's predictors.

    python -m serving serve lvvit_s.onnx                       # uvicorn on 127.0.0.1:8000, dynamic batching
    python -m serving serve lvvit_s.onnx --ray                 # the same app as a Ray Serve deployment
    python -m serving predict photos/ --model lvvit_s.onnx --out preds.jsonl
    python -m serving triton-repo lvvit_s.onnx --repo models/  # config.pbtxt + 1/model.onnx
    python -m serving bench lvvit_s.onnx                       # loopback load benchmark against the predictor

It sits above `runtimes` (predictors are opened through their specs) and nothing below imports it. Its
dependencies are the `[serve]` extra (FastAPI, uvicorn, prometheus-client; Ray Serve for `--ray`): modules
import them only when they run.
"""
