"""Where stores live when the caller names none."""

from __future__ import annotations

from pathlib import Path

import platformdirs


def default_store_path(name: str = "default") -> Path:
    """``<user data dir>/doc2lora-rag/stores/<name>``: per user, survives cache cleaning."""
    return Path(platformdirs.user_data_dir("doc2lora-rag")) / "stores" / name
