"""Finding models: shipped ones in exports/, the user's under the XDG data folder, or any path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .atomic import recover
from .checkpoint import Checkpoint, folder_bytes, load_state_dict, weight_files
from .errors import GptuiError
from .paths import data_dir

DEFAULT_MODELS = ("gptui-code", "gptui-small-instruct", "gptui-small")  # first one present is the default


@dataclass
class ModelInfo:
    name: str
    path: Path
    where: str  # "shipped", "user" or "path"
    params: int = 0
    bytes: int = 0
    encoding: str = ""
    error: str = ""  # why the model cannot load; empty when it looks whole

    @property
    def ok(self) -> bool:
        return not self.error


def shipped_dir() -> Path:
    return Path(str(resources.files("gptui.exports")))


def user_models_dir() -> Path:
    return data_dir() / "models"


def _roots() -> list[tuple[str, Path]]:
    return [("user", user_models_dir()), ("shipped", shipped_dir())]


def inspect(path: Path, where: str, name: str | None = None, deep: bool = False) -> ModelInfo:
    """Describe a model folder; problems are recorded in .error rather than raised."""
    info = ModelInfo(name or path.name, path, where)
    try:
        ckpt = Checkpoint.open(path)
        info.encoding = ckpt.encoding
        info.params = ckpt.config.num_params()
        info.bytes = folder_bytes(path)
        if deep:
            load_state_dict(path)  # reads every tensor: finds truncation and corruption
        else:
            missing = [p.name for p in weight_files(path) if not p.exists()]
            if missing:
                raise GptuiError(f"missing {', '.join(missing)}")
    except GptuiError as e:
        info.error = str(e)
    return info


def list_models(deep: bool = False) -> list[ModelInfo]:
    seen: set[str] = set()
    found = []
    for where, root in _roots():
        if not root.is_dir():
            continue
        for path in sorted(root.iterdir()):
            if not path.is_dir() or path.name.startswith((".", "_")) or path.name in seen:
                continue
            seen.add(path.name)
            found.append(inspect(path, where, deep=deep))
    return found


def default_model_name() -> str:
    if os.environ.get("GPTUI_MODEL"):
        return os.environ["GPTUI_MODEL"]
    names = {m.name for m in list_models()}
    for name in DEFAULT_MODELS:
        if name in names:
            return name
    if names:
        return sorted(names)[0]
    raise GptuiError(
        "no model found: reinstall gptui to restore the shipped models in exports/, "
        "or create one with `gptui-train init --preset small --out DIR` and pass --model DIR"
    )


def restore_hint(folder: Path, error: GptuiError) -> GptuiError:
    """For a damaged shipped model, add how to get it back; other errors (a backend this machine
    cannot run, say) pass through, since the files are fine."""
    try:
        shipped = Path(folder).resolve().parent == shipped_dir().resolve()
    except OSError:
        shipped = False
    if not shipped or inspect(Path(folder), "shipped", deep=True).ok:
        return error
    return GptuiError(f"{error}; the shipped model is damaged: restore it with "
                      f"`git checkout -- exports/{Path(folder).name}` in a source checkout, "
                      "or `pip install --force-reinstall gptui`")


def open_for_generation(name_or_path: str | None, backend_name: str):
    """(folder, encoding, backend, config metadata) of a model loaded to generate with; a damaged
    shipped model's error says how to restore it."""
    from .backends import load_backend
    from .tokenizer import get_encoding

    folder = resolve(name_or_path)
    try:
        ckpt = Checkpoint.open(folder)
        return folder, get_encoding(ckpt.encoding), load_backend(backend_name, folder), ckpt.meta
    except GptuiError as e:
        raise restore_hint(folder, e) from None


def resolve(name_or_path: str | None) -> Path:
    """A model folder from a name (user models first, then shipped) or a path. The one place a
    model is opened by name: it also puts back a folder that a save killed mid-swap left as .NAME.old."""
    name = name_or_path or default_model_name()
    path = Path(name).expanduser()
    recover(path)
    if path.is_dir() or os.sep in name or name.startswith("."):
        if not path.is_dir():
            raise GptuiError(f"model folder {path} does not exist")
        return path
    for _, root in _roots():
        recover(root / name)
        if (root / name).is_dir():
            return root / name
    known = ", ".join(m.name for m in list_models()) or "none"
    raise GptuiError(f"unknown model {name!r} (known: {known})")
