"""Real labelled data sets that ship inside PyPI packages, written out as image folders (see `digits`)."""
