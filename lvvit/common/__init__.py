"""The kit's infrastructure, apart from the model: atomic writes, regular-file reads, interrupts, progress, versions,
provenance, install hints, CPU detection, memory measurement, and the comparison core (`metrics`:
drift and accuracy statistics; `gate`: limits and the verdict).

Nothing here imports the model, its presets, a runtime or Paddle: `lvvit.common` is the floor the rest stands on.
"""
