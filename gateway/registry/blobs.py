"""A content-addressed store of the files a version references (model and reference data files).

`<data dir>/blobs/<hash[:2]>/<version hash>/<file>`: written once, atomically, when the bytes are seen to
match the version's content hash (at `opsgate sync`, or when a gateway first loads the version), so a
version stays servable (for rollback) after the file in the project changes or is removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def blob_root(data_dir: Path) -> Path:
    return data_dir / "blobs"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, version_hash: str) -> Path:
        return self.root / version_hash[:2] / version_hash

    def read(self, version_hash: str, names: list[str]) -> dict[str, bytes] | None:
        folder = self.folder(version_hash)
        try:
            return {name: (folder / name).read_bytes() for name in names}
        except OSError:
            return None

    def stash(self, version_hash: str, files: dict[str, bytes]) -> None:
        """Write atomically: a folder is either complete or absent."""
        target = self.folder(version_hash)
        if target.is_dir():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            for name, data in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.is_dir():
                raise
