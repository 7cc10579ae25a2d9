"""Bookkeeping of the converted-GGUF cache: one entry per GGUF file name, keyed by content.

An entry is `<cache_dir>/<gguf stem>-<key>`: a transformers model directory (written by
`bot.backends.model_loading`) whose marker file, written last, says it is complete. The key hashes
the GGUF's content (SHA-256) and the transformers version, the two things the conversion depends
on; not the file's path or mtime, which change with every clone or reinstall of the same model
(each one used to convert again and leave another ~500 MB copy behind).

Why the content and not the package version for the bundled model: one rule for the bundled and
for configured `.gguf` files, and a file replaced in place (or a package rebuilt under the same
version) can never be served stale weights. Hashing the ~100 MB bundled file takes a fraction of
a second, and even that is skipped when an entry's marker already lists the file with the same
path, size and mtime.

Writing a new entry removes the other entries of the same GGUF file name (older content, another
transformers version, the mtime-keyed entries of earlier releases): the cache holds one copy per
model. Two different files sharing one name take turns in the cache.

Nothing here imports torch or transformers; the caller passes the transformers version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("bot.backends.local")

MARKER = "chinwag-gguf-cache.json"
"""Written last into an entry, so its presence means the entry is complete."""
_KNOWN_SOURCES = 8  # (path, size, mtime) triples a marker remembers: clones and venvs sharing it


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Where the conversion of one GGUF file's content is (or will be) cached."""

    path: Path
    content_sha256: str
    transformers_version: str


def locate(gguf: Path, cache_dir: Path, transformers_version: str) -> CacheEntry:
    """The cache entry for `gguf`'s content converted by this transformers version. Reads the
    file only when no entry's marker knows it by path, size and mtime."""
    sha = _known_sha256(gguf, cache_dir) or _hash_file(gguf)
    key = hashlib.sha256(f"{sha}|transformers {transformers_version}".encode()).hexdigest()[:16]
    return CacheEntry(cache_dir / f"{gguf.stem}-{key}", sha, transformers_version)


def marker_text(entry: CacheEntry, gguf: Path) -> str:
    """The marker for a new entry converted from `gguf`."""
    return json.dumps(
        {
            "gguf_name": gguf.name,
            "sha256": entry.content_sha256,
            "transformers": entry.transformers_version,
            "sources": [_source(gguf)],
        }
    )


def remember_source(entry: CacheEntry, gguf: Path) -> None:
    """Add `gguf`'s path, size and mtime to the entry's marker (found by hashing), so the next
    start with this file skips the hash. Best effort: the marker is replaced atomically, and a
    failure only costs the hash again next time."""
    marker = entry.path / MARKER
    try:
        data = json.loads(marker.read_text())
        source = _source(gguf)
        sources = [s for s in data.get("sources", []) if s != source]
        data["sources"] = [*sources[-(_KNOWN_SOURCES - 1) :], source]
        fd, tmp = tempfile.mkstemp(prefix=f".{MARKER}.", dir=entry.path)
        with os.fdopen(fd, "w") as file:
            json.dump(data, file)
        os.replace(tmp, marker)
    except (OSError, ValueError, AttributeError, TypeError):
        logger.debug("could not update the model cache marker %s", marker, exc_info=True)


def remove_stale(entry: CacheEntry, gguf: Path) -> None:
    """Remove every other entry of `gguf`'s file name. Never raises."""
    for other in _entries_of(gguf, entry.path.parent):
        if other != entry.path:
            logger.info("removing the outdated model cache %s", other)
            remove_dir(other)


def remove_dir(path: Path) -> None:
    """Delete a cache directory; a concurrent reader never sees it half-deleted (renamed first)."""
    doomed = path.with_name(f".{path.name}.deleting-{os.getpid()}")
    try:
        os.rename(path, doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


def _entries_of(gguf: Path, cache_dir: Path) -> list[Path]:
    """The entry directories named for `gguf` (temporary and doomed ones start with a dot)."""
    pattern = re.compile(re.escape(gguf.stem) + r"-[0-9a-f]{16}")
    try:
        return sorted(p for p in cache_dir.iterdir() if pattern.fullmatch(p.name) and p.is_dir())
    except OSError:  # no cache dir yet, or not a directory
        return []


def _known_sha256(gguf: Path, cache_dir: Path) -> str | None:
    """The content hash a complete entry's marker records for this very file, if any."""
    source = _source(gguf)
    for entry in _entries_of(gguf, cache_dir):
        data = _read_marker(entry / MARKER)
        sha = data.get("sha256")
        if isinstance(sha, str) and source in data.get("sources", []):
            return sha
    return None


def _read_marker(marker: Path) -> dict[str, Any]:
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _source(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"path": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _hash_file(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
