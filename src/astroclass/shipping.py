"""Files sent to Ray nodes through the object store, chunk by chunk, and assembled and verified there: the
driver never holds a file whole, and a node never trusts a copy whose sha256 differs from the driver's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from astroclass.errors import AstroclassError
from astroclass.fileio import atomic_output

CHUNK = 64 << 20
"""Bytes per object-store object."""


def put_file(ray: Any, path: str | Path, chunk: int = CHUNK) -> tuple[str, int, tuple]:
    """(sha256, size, object references of its chunks) of the file, put into the object store."""
    h, chunks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
            chunks.append(ray.put(block))
            size += len(block)
    return h.hexdigest(), size, tuple(chunks)


def assemble(ray: Any, chunks: tuple, target: Path, sha256: str, driver_path: str) -> None:
    """Write the chunks to ``target`` atomically; an error naming the driver's file if the bytes' sha256 is not
    ``sha256`` (nothing is left at ``target`` then)."""
    with atomic_output(target) as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as fh:
            for ref in chunks:
                block = ray.get(ref)
                h.update(block)
                fh.write(block)
        if h.hexdigest() != sha256:
            raise AstroclassError(f"{driver_path}: the copy received on this node differs from the driver's file "
                                  f"(sha256 {h.hexdigest()[:12]}, expected {sha256[:12]})")
