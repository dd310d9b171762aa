"""The app's settings: one TOML file under the XDG config folder, read with tomllib, written atomically.

```toml
[sampling]
temperature = 0.2
top_k = 50
top_p = 1.0
max_tokens = 64          # per completion
chat_max_tokens = 256    # per chat answer
seed = 7                 # leave out for a fresh random seed each time (the status shows it)
no_repeat_ngram = 12     # chat and completions never repeat 12 generated tokens; 0 disables
stop_repeats = 3         # stop when a line (or a cycle of up to 4) comes 3 times in a row; 0 disables

[editor]
debounce_ms = 250        # idle pause before a completion starts
stop = ["\nif __name__"] # extra stop strings for completions

[model]
name = "gptui-small"     # remembered from the model picker
backend = "torch-fp32"

[log]
enabled = false          # keep no record of completions and chat answers (see `gptui logs`)

[keys]                   # binding id = keys (see F1 for every id)
"editor.accept" = "tab,right"
```
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from ..core.atomic import write_bytes_atomic
from ..core.errors import GptuiError
from ..core.paths import config_dir
from ..core.sampling import SamplingParams

CONFIG_NAME = "config.toml"

# Defaults of the instruction path (the app's chat and completions, `gptui -i`); see Settings.
CHAT_NO_REPEAT_NGRAM = 12
CHAT_STOP_REPEATS = 3

# Where each field lives in the file: section -> field names (the dataclass stays flat).
SECTIONS: dict[str, tuple[str, ...]] = {
    "sampling": ("temperature", "top_k", "top_p", "max_tokens", "chat_max_tokens", "seed", "no_repeat_ngram",
                 "stop_repeats"),
    "editor": ("debounce_ms", "stop"),
    "model": ("model", "backend"),
    "log": ("log_enabled",),
}
_FILE_NAMES = {"model": "name", "log_enabled": "enabled"}  # fields whose key in the file differs from the attribute


@dataclass
class Settings:
    temperature: float = 0.2  # code completion wants little randomness; 0 is greedy
    top_k: int = 50  # 0 keeps every token; a top-k cut costs far less per token than a top-p sort
    top_p: float = 1.0
    max_tokens: int = 64  # new tokens per completion at most
    chat_max_tokens: int = 256  # new tokens per chat answer at most
    seed: int | None = None  # None: a fresh random seed per generation, shown in the status
    # Against greedy loops (`x_csv_csv_csv...`, one line over and over), for chat and completions.
    # Model-agnostic: a 12-gram is rare inside a short answer but any loop has one; a block of 1-4
    # lines three times in a row cut no 256-token chunk of this repository's code.
    no_repeat_ngram: int = CHAT_NO_REPEAT_NGRAM
    stop_repeats: int = CHAT_STOP_REPEATS
    debounce_ms: int = 250  # idle time after typing before a completion starts
    stop: list[str] = field(default_factory=list)  # extra completion stop strings
    model: str | None = None  # last model picked (name or folder)
    backend: str | None = None  # last backend picked
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys, e.g. "tab,right"
    log_enabled: bool = True  # record completions and chat answers in the history database

    def validate(self) -> None:
        """Raise GptuiError naming the first bad value."""
        self.sampling(self.max_tokens, 0)
        if self.max_tokens < 1 or self.chat_max_tokens < 1:
            raise GptuiError("max tokens must be at least 1")
        if self.debounce_ms < 0:
            raise GptuiError(f"debounce must be >= 0 ms, got {self.debounce_ms}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GptuiError(f"seed must be between 0 and 2**63, got {self.seed}")

    def sampling(self, max_tokens: int, seed: int, stop: tuple[str, ...] = ()) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              seed=seed, max_tokens=max_tokens, stop=stop, no_repeat_ngram=self.no_repeat_ngram,
                              stop_repeats=self.stop_repeats)

    def to_toml(self) -> dict:
        data: dict = {}
        for section, names in SECTIONS.items():
            values = {_FILE_NAMES.get(n, n): getattr(self, n) for n in names}
            data[section] = {k: v for k, v in values.items() if v is not None}  # TOML has no null
        data["keys"] = dict(self.keys)
        return data

    @classmethod
    def from_toml(cls, data: dict) -> tuple["Settings", list[str]]:
        """Settings plus warnings: a bad value is reported and replaced by its default."""
        settings, warnings = cls(), []
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for section, names in SECTIONS.items():
            table = data.get(section, {})
            if not isinstance(table, dict):
                warnings.append(f"[{section}] should be a table")
                continue
            for name in names:
                key = _FILE_NAMES.get(name, name)
                if key not in table:
                    continue
                value = table[key]
                if not _fits(value, types[name]):
                    warnings.append(f"[{section}] {key} = {value!r} is not a valid {types[name]}; using the default")
                    continue
                setattr(settings, name, float(value) if types[name] == "float" else value)
        keys = data.get("keys", {})
        if isinstance(keys, dict) and all(isinstance(v, str) for v in keys.values()):
            settings.keys = dict(keys)
        else:
            warnings.append("[keys] should map binding ids to key strings")
        try:
            settings.validate()
        except GptuiError as e:
            warnings.append(f"{e}; using default sampling settings")
            defaults = cls()
            for name in SECTIONS["sampling"] + ("debounce_ms",):
                setattr(settings, name, getattr(defaults, name))
        return settings, warnings


def _fits(value, type_name: str) -> bool:
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name in ("int", "int | None"):
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "str | None":
        return isinstance(value, str)
    if type_name == "list[str]":
        return isinstance(value, list) and all(isinstance(s, str) for s in value)
    return False


def settings_path() -> Path:
    return config_dir() / CONFIG_NAME


def load_settings(path: Path | None = None) -> tuple[Settings, list[str]]:
    """Read the file; a missing file gives defaults, a broken one defaults plus a warning."""
    path = path or settings_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings(), []
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return Settings(), [f"{path}: unreadable ({e}); using defaults"]
    settings, warnings = Settings.from_toml(data)
    return settings, [f"{path}: {w}" for w in warnings]


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write through a temp file and rename, so a crash never leaves half a config."""
    path = path or settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, tomli_w.dumps(settings.to_toml()).encode("utf-8"))
    except OSError as e:
        raise GptuiError(f"cannot write {path}: {e.strerror or e}") from None
    return path
