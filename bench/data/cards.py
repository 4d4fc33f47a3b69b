"""Dataset cards and verified file fetching.

A card (``datasets/<name>.toml``, shipped as ``bench/cards``) names the
publisher's archive URL, every file's sha256, the parser, license and citation.
Files are looked up in this order, and every file is checked against its sha256
before it is used:

1. the cache directory (``<cache>/<card name>/<file>``);
2. each mirror directory (``<mirror>/<archive folder>/<file>``), read in place;
3. a download of the canonical archive into the cache -- written to a temporary
   name and renamed only once its checksum is right, so an interrupted or corrupt
   download never leaves a half-written file behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bench import diskcache
from bench.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataOptions:
    """Where data comes from. Built by the CLI or the caller, never from the environment."""

    cache_dir: Path = field(default_factory=lambda: diskcache.DEFAULT_ROOT)  # bench's one cache home
    mirrors: tuple[Path, ...] = ()
    allow_download: bool = True


@dataclass(frozen=True)
class Card:
    """A parsed dataset card."""

    name: str
    title: str
    parser: str
    url: str
    folder: str
    files: dict[str, str]  # file name -> sha256
    license: str
    citation: str
    homepage: str
    implicit_defaults: dict[str, Any]
    path: Path

    @property
    def info(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "url": self.url,
            "license": self.license,
            "citation": self.citation,
            "sha256": dict(self.files),
        }


def cards_dir() -> Path:
    """Directory holding the dataset cards.

    In a built wheel the top-level ``datasets/`` folder ships as ``bench/cards``;
    in a source checkout (editable install) it is read where it lives.
    """
    packaged = Path(str(resources.files("bench"))) / "cards"
    if packaged.is_dir():
        return packaged
    return Path(str(resources.files("bench"))).parent / "datasets"


def read_card(path: Path) -> Card:
    """Parse and validate one card file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"dataset card {path}: cannot be read ({exc})") from exc
    required = ("name", "title", "parser", "license", "citation", "archive", "files")
    missing = [key for key in required if key not in raw]
    if missing:
        raise ConfigError(f"dataset card {path}: missing key(s) {', '.join(missing)}")
    archive = raw["archive"]
    return Card(
        name=raw["name"],
        title=raw["title"],
        parser=raw["parser"],
        url=archive["url"],
        folder=archive.get("folder", raw["name"]),
        files={name: str(digest).lower() for name, digest in raw["files"].items()},
        license=raw["license"],
        citation=raw["citation"],
        homepage=raw.get("homepage", ""),
        implicit_defaults=dict(raw.get("implicit", {})),
        path=path,
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, expected: str, card: Card, where: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        fix = (
            f"delete it (rm '{path}') and run again to re-download"
            if where == "cache"
            else "replace it with the publisher's original file or remove it from the mirror"
        )
        raise DataError(
            f"dataset '{card.name}': {where} file {path} has sha256 {actual[:12]}..., "
            f"expected {expected[:12]}... (card {card.path.name}); the file is corrupt or "
            f"truncated: {fix}"
        )


def fetch(card: Card, options: DataOptions, needed: list[str] | None = None) -> dict[str, Path]:
    """Return verified local paths for the card's files (``needed`` ones only if given)."""
    names = needed or list(card.files)
    unknown = [n for n in names if n not in card.files]
    if unknown:
        raise ConfigError(f"dataset card {card.path.name} lists no file {unknown}")
    cache = options.cache_dir / card.name
    found: dict[str, Path] = {}
    for name in names:
        cached = cache / name
        if cached.is_file():
            _verify(cached, card.files[name], card, "cache")
            found[name] = cached
            continue
        for mirror in options.mirrors:
            candidates = [Path(mirror) / card.folder / name, Path(mirror) / card.name / name]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is not None:
                _verify(hit, card.files[name], card, "mirror")
                found[name] = hit
                break
    missing = [n for n in names if n not in found]
    if missing:
        if not options.allow_download:
            looked = [str(options.cache_dir / card.name)] + [str(Path(m) / card.folder) for m in options.mirrors]
            raise DataError(
                f"dataset '{card.name}': file(s) {', '.join(missing)} not found in {', '.join(looked)} "
                f"and downloads are off; pass --mirror DIR pointing at a copy of {card.url} "
                f"or allow downloads"
            )
        found.update(_download(card, options, missing))
    return found


def _download(card: Card, options: DataOptions, names: list[str]) -> dict[str, Path]:
    """Download the archive, extract ``names`` into the cache atomically."""
    cache = options.cache_dir / card.name
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive"
        try:
            with urllib.request.urlopen(card.url, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise DataError(
                f"dataset '{card.name}': download of {card.url} failed ({exc}); "
                f"pass --mirror DIR pointing at a local copy of the publisher's files"
            ) from exc
        try:
            with zipfile.ZipFile(archive) as zf:
                members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
                result: dict[str, Path] = {}
                for name in names:
                    if name not in members:
                        raise DataError(f"dataset '{card.name}': archive {card.url} has no file {name}")
                    staged = Path(tmp) / name
                    with zf.open(members[name]) as src, staged.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                    _verify(staged, card.files[name], card, "downloaded")
                    final = cache / name
                    os.replace(staged, final)  # atomic: only verified files reach the cache
                    result[name] = final
                return result
        except zipfile.BadZipFile as exc:
            raise DataError(f"dataset '{card.name}': {card.url} is not a valid zip archive ({exc})") from exc
