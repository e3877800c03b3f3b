"""The kit's infrastructure, apart from the model: atomic writes, regular-file reads, interrupts, progress, versions,
provenance, install hints, CPU detection, memory measurement, synthetic images, and the comparison core (`metrics`:
drift and accuracy statistics; `gate`: limits and the verdict).

Nothing here imports the model, a runtime or Paddle.
"""
