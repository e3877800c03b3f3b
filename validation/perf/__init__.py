"""Performance: the bench of every runtime path (`bench`), its artifacts and CPU floors, engine and stream
latency comparisons, and the exporter's memory and time."""
