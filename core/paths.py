"""Where gptui keeps user files: XDG folders, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(var: str, override: str, fallback: str) -> Path:
    if os.environ.get(override):
        return Path(os.environ[override]).expanduser()
    base = os.environ.get(var) or str(Path.home() / fallback)
    return Path(base).expanduser() / "gptui"


def config_dir() -> Path:
    """Settings (config.toml): $GPTUI_CONFIG_DIR, else $XDG_CONFIG_HOME/gptui."""
    return _xdg("XDG_CONFIG_HOME", "GPTUI_CONFIG_DIR", ".config")


def data_dir() -> Path:
    """User models live in models/ under this: $GPTUI_DATA_DIR, else $XDG_DATA_HOME/gptui."""
    return _xdg("XDG_DATA_HOME", "GPTUI_DATA_DIR", ".local/share")


def cache_dir() -> Path:
    """Rebuildable artifacts (ONNX, INT8): $GPTUI_CACHE_DIR, else $XDG_CACHE_HOME/gptui."""
    return _xdg("XDG_CACHE_HOME", "GPTUI_CACHE_DIR", ".cache")
