"""A decode-once cache on disk: arrays as .npy files under DATA_ROOT/.teli-cache/<key>/, memory-mapped.

The key names the dataset (and, for user data, its folder); a fingerprint of the source files (names,
sizes, modification times) and of the decode options is stored beside the arrays, so a changed
source is decoded again. Without a writable data_root the arrays are simply not cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def fingerprint(files: list[Path], options: dict | None = None) -> str:
    digest = hashlib.sha256(json.dumps(options or {}, sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_dir(data_root: str | Path, key: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)
    return Path(data_root) / ".teli-cache" / safe


def cached_arrays(data_root: str | Path, key: str, files: list[Path], build: Callable[[], dict[str, np.ndarray]],
                  options: dict | None = None, enabled: bool = True) -> dict[str, np.ndarray]:
    """`build()`'s arrays, read back memory-mapped (copy-on-write) from the cache when it is current."""
    if not enabled:
        return build()
    folder = cache_dir(data_root, key)
    stamp = fingerprint(files, options)
    meta_path = folder / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") == stamp:
            arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in meta["arrays"]}
            return {**arrays, **{k: np.asarray(v) for k, v in meta.get("scalars", {}).items()}}
    except (OSError, ValueError, KeyError):
        pass
    arrays = build()
    tmp = None
    try:
        # a folder of this call's own: two runs building one cache at once must not write into the same one
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".part"))
        big = {k: v for k, v in arrays.items() if v.ndim > 0}
        for name, array in big.items():
            np.save(tmp / f"{name}.npy", array)
        scalars = {k: v.item() for k, v in arrays.items() if v.ndim == 0}
        (tmp / "meta.json").write_text(json.dumps({"fingerprint": stamp, "arrays": sorted(big), "scalars": scalars}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.replace(folder)  # fails if another run put its (equally good) cache there first: keep that one
    except OSError:
        pass  # read-only data_root: no cache, the arrays are still good
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return arrays
