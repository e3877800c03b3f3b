"""The pip command that installs one of the kit's extras for this installation (the kit is not on PyPI)."""

from __future__ import annotations

import json
import shlex
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "lvvit-deploy"


def _source() -> tuple[str, bool] | None:
    """(where the kit was installed from, editable?) from pip's `direct_url.json` (PEP 610), if pip recorded it."""
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    url = record.get("url", "")
    editable = bool(record.get("dir_info", {}).get("editable"))
    return (url.removeprefix("file://"), editable) if url.startswith("file://") else None


def install_command(extra: str) -> str:
    """`pip install -e '/path/to/kit[extra]'` for a source checkout (this one, or the folder pip installed
    from), else `pip install 'lvvit-deploy[extra]'` (an index that serves the kit)."""
    checkout = Path(__file__).resolve().parents[2]  # lvvit/common/install.py -> the checkout
    if (checkout / "pyproject.toml").is_file():  # running from a source tree: install into it, editable
        return f"pip install -e {shlex.quote(f'{checkout}[{extra}]')}"
    source = _source()
    if source is not None:
        folder, editable = source
        return f"pip install {'-e ' if editable else ''}{shlex.quote(f'{folder}[{extra}]')}"
    return f"pip install {shlex.quote(f'{DISTRIBUTION}[{extra}]')}"
