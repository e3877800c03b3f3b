"""The runs: drift, accuracy and locate, each from a model source and its inputs to a report."""
