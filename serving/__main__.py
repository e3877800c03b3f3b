"""`python -m serving`: serve an export, predict a folder, write a Triton repository, run the load benchmark."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
