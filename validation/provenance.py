"""What a report records so that a run can be reproduced: the command, the machine, the package versions."""

from __future__ import annotations

import datetime
import os
import platform
from typing import Any

from lvvit.common.versions import package_version
from runtimes import registry

# the kit's own tools; the runtimes' distributions come from their registry rows (`packages()`)
PACKAGES = ("lvvit-deploy", "paddlepaddle", "paddle2onnx", "onnx", "numpy", "pillow", "matplotlib")


def packages() -> list[str]:
    """The distributions whose versions a report records: the kit's tools, then every registered runtime's."""
    return list(dict.fromkeys([*PACKAGES, *registry.distributions()]))


def environment(command: list[str] | None = None) -> dict[str, Any]:
    """The machine and package versions; `command` is the command line that made the report, when known."""
    versions = {name: package_version(name) for name in packages()}  # "not installed" ones are left out below
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "packages": {k: v for k, v in versions.items() if v != "not installed"},
    }
