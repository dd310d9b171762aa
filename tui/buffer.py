"""The file the editor shows: where it saves, and what it held when last read or written, so the
app can tell the buffer is modified and that the file changed on disk under it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import write_bytes_atomic


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Buffer:
    path: Path | None  # where Ctrl+S writes; None: ask for a name
    saved_text: str  # the text as last read or written
    disk_hash: str | None  # sha256 of the file as last read or written (None: no file yet)

    @classmethod
    def open(cls, path: str | Path | None) -> tuple[Buffer, str, str | None]:
        """(buffer, text to show, error). A missing file is a new file; a file that cannot be read
        or is not UTF-8 gives an empty buffer with no path, so saving never overwrites what could
        not be shown."""
        if path is None:
            return cls(None, "", None), "", None
        path = Path(path).expanduser()
        if not path.exists():
            return cls(path, "", None), "", None
        try:
            data = path.read_bytes()
        except OSError as e:
            return cls(None, "", None), "", f"Cannot open {path}: {e.strerror or e}"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            return cls(None, "", None), "", f"{path} is not UTF-8 text (byte {e.start}); opened an empty buffer instead"
        return cls(path, text, _sha(data)), text, None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "untitled"

    def modified(self, text: str) -> bool:
        return text != self.saved_text

    def overwrite_question(self, path: Path, new_name: bool) -> str | None:
        """What to ask before writing to `path`, or None to write at once: a file there under a new
        name, or our file changed on disk since it was read or written. OSError when unreadable."""
        if not path.exists():
            return None
        if new_name:
            return f"{path} already exists. Overwrite it?"
        if _sha(path.read_bytes()) != self.disk_hash:
            return f"{path.name} changed on disk since it was opened. Overwrite it?"
        return None

    def write(self, path: Path, text: str) -> None:
        """Write atomically; on success the buffer saves to `path` from now on. OSError leaves it as it was."""
        data = text.encode("utf-8")
        write_bytes_atomic(path, data)
        self.path, self.saved_text, self.disk_hash = path, text, _sha(data)
