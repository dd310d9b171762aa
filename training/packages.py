"""Which distribution (name, version, license) a top-level package in a root came from.

A corpus built from site-packages is only as redistributable as its licenses, so the manifest
records them, read from the `*.dist-info/METADATA` files that pip leaves beside each package.
A root written by `gptui-train gather` says it in its sources.json: each top-level folder is a
repository (distribution owner/name, version its commit, license its SPDX id).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from email.parser import HeaderParser
from pathlib import Path

MAX_LICENSE_CHARS = 120  # some METADATA files paste the whole license text into the field


@dataclass(frozen=True)
class Distribution:
    distribution: str
    version: str
    license: str

    def to_dict(self) -> dict:
        return asdict(self)


def _license(meta) -> str:
    """SPDX expression if declared, else the License field, else the license classifiers."""
    for field in ("License-Expression", "License"):
        value = (meta.get(field) or "").strip()
        if value and value.upper() != "UNKNOWN":
            first = value.splitlines()[0].strip()
            return first[:MAX_LICENSE_CHARS]
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(classifiers)


def _top_levels(dist_info: Path, name: str) -> set[str]:
    """Top-level names a distribution installs: top_level.txt, else the first parts of RECORD paths."""
    top_level = dist_info / "top_level.txt"
    if top_level.is_file():
        names = {line.strip() for line in top_level.read_text(errors="replace").splitlines() if line.strip()}
        if names:
            return names
    names = set()
    record = dist_info / "RECORD"
    if record.is_file():
        for line in record.read_text(errors="replace").splitlines():
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first and not first.endswith((".dist-info", ".data")) and first not in ("..", "__pycache__"):
                names.add(first[:-3] if first.endswith(".py") else first)
    return names or {name.replace("-", "_").lower()}


def _gathered(root: Path) -> dict[str, Distribution]:
    """Top-level folder -> its repository, from the sources.json that gather wrote in root."""
    from .gather import read_record

    record = read_record(root)
    if record is None:
        return {}
    return {r["folder"]: Distribution(r["repo"], r["commit"], r["license"] or "")
            for r in record.get("repos", []) if not r.get("refused") and r.get("folder")}


def find_distributions(root: Path) -> dict[str, Distribution]:
    """Top-level package name -> the distribution that installed it, for one root folder."""
    found: dict[str, Distribution] = _gathered(root)
    for dist_info in sorted(root.glob("*.dist-info")):
        metadata = dist_info / "METADATA"
        if not metadata.is_file():
            continue
        meta = HeaderParser().parsestr(metadata.read_text(errors="replace"))
        name = (meta.get("Name") or dist_info.name.split("-")[0]).strip()
        dist = Distribution(name, (meta.get("Version") or "").strip(), _license(meta))
        for top in _top_levels(dist_info, name):
            found.setdefault(top, dist)
    return found
