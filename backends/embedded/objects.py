"""The embedded default's object store: a local folder, one file per object.

Keys are "/"-separated paths below `root`. Writes never happen in place (Loki's filesystem
store did, and a crash mid-write left a torn object that readers then choked on): put() writes a
temporary file in the object's own directory, fsyncs it, renames it over the final name and
fsyncs the directory, so a reader sees either the old object or the new one, never half of one,
and the object survives a power cut once put() has returned.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from server.core.ports import ObjectInfo

# Temporary files live beside their object under this name prefix; list() hides them and keys
# may not use it, so a leftover from a crash can never be mistaken for an object.
_TMP_PREFIX = ".tmp-"


class InvalidKey(ValueError):
    """A key that could name a file outside the root (or a temporary file)."""


def _check_key(key: str, *, prefix: bool = False) -> list[str]:
    """The key's path segments; raises InvalidKey for anything that could escape the root.

    A prefix (for list) may be empty and may end with "/" or in the middle of a segment; a key
    must name a file: non-empty segments only.
    """
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a string, got {type(key).__name__}")
    if "\x00" in key:
        raise InvalidKey(f"object key {key!r} contains NUL")
    if "\\" in key:
        raise InvalidKey(f"object key {key!r} contains a backslash; use '/'")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute")
    if not key:
        if prefix:
            return []
        raise InvalidKey("object key is empty")
    parts = key.split("/")
    if prefix and parts[-1] == "":
        parts = parts[:-1]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part in (".", ".."):
            raise InvalidKey(f"object key {key!r} contains a '{part}' segment")
        if part == "" and not (prefix and last):
            raise InvalidKey(f"object key {key!r} contains an empty segment")
        if part.startswith(_TMP_PREFIX):
            raise InvalidKey(f"object key {key!r} uses the reserved name prefix {_TMP_PREFIX!r}")
    return parts


def _fsync_dir(path: Path) -> None:
    """Make a rename/create/unlink in `path` durable (a file's fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectStore:
    """ObjectStore on a local folder.

    Durability: put() is durable when it returns (temp file + fsync + rename + directory fsync,
    including the fsync of every directory it had to create). delete() is durable when it
    returns. A missing key in get() raises KeyError.

    The folder cannot hold both an object "a/b" and an object "a/b/c" (a file cannot also be a
    directory); the archive's layout never asks for that, and such a put raises OSError.
    """

    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- keys -------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        parts = _check_key(key)
        path = self.root.joinpath(*parts)
        # Belt and braces: symlinks placed inside the root by someone else could still lead out.
        if not path.resolve().is_relative_to(self.root):
            raise InvalidKey(f"object key {key!r} resolves outside the store's root")
        return path

    # -- ObjectStore ------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = path.parent / f"{_TMP_PREFIX}{uuid.uuid4().hex}-{path.name}"
        for attempt in (1, 2):
            self._make_dirs(path.parent)
            try:
                f = open(tmp, "xb")
            except FileNotFoundError:
                # A concurrent delete() pruned the directory between mkdir and open: once more.
                if attempt == 2:
                    raise
                continue
            break
        try:
            with f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyError(key) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix, as in S3), sorted
        by key. Collected before yielding: the order must be the key order and a directory walk
        does not give it ("a-b" sorts before "a/b")."""
        parts = _check_key(prefix, prefix=True)
        # The deepest directory that the prefix fully names; a trailing partial segment filters.
        if prefix.endswith("/") or not parts:
            base_parts = parts
        else:
            base_parts = parts[:-1]
        base = self.root.joinpath(*base_parts)
        if not base.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(_TMP_PREFIX)]
            for fname in filenames:
                if fname.startswith(_TMP_PREFIX):
                    continue
                full = os.path.join(dirpath, fname)
                key = Path(full).relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    size = os.stat(full).st_size
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append(ObjectInfo(key=key, size=size))
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, keys: Iterable[str]) -> None:
        """Remove the objects (missing ones are ignored) and prune directories left empty."""
        touched: set[Path] = set()
        for key in keys:
            path = self._path(key)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            touched.add(path.parent)
        for d in touched:
            if d.exists():
                _fsync_dir(d)
        # Deepest first, so a parent is tried after its children.
        for d in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            self._prune(d)

    def healthy(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK | os.X_OK)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    # -- helpers ----------------------------------------------------------------------------

    def _make_dirs(self, directory: Path) -> None:
        """mkdir -p that fsyncs each parent whose entry it created, so new dirs survive a crash."""
        missing: list[Path] = []
        d = directory
        while d != self.root and not d.is_dir():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
                continue
            _fsync_dir(d.parent)

    def _prune(self, directory: Path) -> None:
        d = directory
        while d != self.root and d.is_relative_to(self.root):
            try:
                d.rmdir()
            except OSError:  # not empty (or already gone / raced with a put): stop here
                if d.exists():
                    return
            d = d.parent
