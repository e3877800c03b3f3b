"""`python -m validation ...`: see `validation.cli`."""

from __future__ import annotations

import sys

from validation.cli import main

sys.exit(main())
