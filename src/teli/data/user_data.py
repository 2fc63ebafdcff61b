"""Your own data: `folder:PATH` (one folder per class) or `npz:PATH` (arrays), as uint8 tensors.

    PATH/train/<class>/*.png|jpg|...   labelled pool (classes: the folder names, sorted)
    PATH/unlabelled/*                  optional extra unlabelled images (no classes)
    PATH/test/<class>/...              optional test split; without it a stratified one is held out

    npz: x_train, y_train, optional x_unlabelled, optional x_test + y_test;
         images [N, H, W, C], [N, C, H, W] (C = 1 or 3) or [N, H, W]; uint8, or float in [0, 1].

Every problem (missing folder, empty class, unreadable image, mismatched lengths, labels out of range,
wrong shapes) is a one-line TeliError that names the file and how to fix it.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from teli.data.cache import cached_arrays
from teli.data.torchvision_sources import note
from teli.errors import TeliError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _class_files(split_dir: Path, classes: list[str] | None) -> tuple[list[str], list[list[Path]]]:
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        if len(found) < 2:
            raise TeliError(f"{split_dir} holds {len(found)} class folder(s): expected {split_dir}/<class>/*.png for at least two classes")
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise TeliError(f"{split_dir}/{unknown[0]} is a class that train/ does not have: rename or remove it")
    files = [list_images(split_dir / c) if (split_dir / c).is_dir() else [] for c in classes]
    for c, fs in zip(classes, files):
        if (split_dir / c).is_dir() and not fs:
            raise TeliError(f"class folder {split_dir / c} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): add some or remove it")
    return classes, files


def _decode(path: Path, resize: int | None) -> np.ndarray:
    """[H, W, 1] or [H, W, 3] uint8; raises on an unreadable file."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        im = im.convert("L") if im.mode in GRAY_MODES else im.convert("RGB")
        if resize:
            im = im.resize((resize, resize), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def decode_images(files: list[Path], resize: int | None, on_corrupt: str, skipped: list[str]) -> tuple[list[np.ndarray], list[int]]:
    images, kept = [], []
    for i, path in enumerate(files):
        try:
            images.append(_decode(path, resize))
            kept.append(i)
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a broken file
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            if on_corrupt == "error":
                raise TeliError(f"cannot read image {path} ({reason}): fix or remove it, or set data.on_corrupt=skip") from None
            skipped.append(f"{path} ({reason})")
    return images, kept


def stack_images(groups: dict[str, tuple[list[np.ndarray], list[Path]]]) -> dict[str, np.ndarray]:
    """One [N, C, H, W] array per group; all images must share a size; grey becomes RGB if any is colour."""
    channels = max((im.shape[2] for ims, _ in groups.values() for im in ims), default=1)
    reference = None
    out = {}
    for name, (ims, paths) in groups.items():
        for im, path in zip(ims, paths):
            if reference is None:
                reference = (im.shape[:2], path)
            elif im.shape[:2] != reference[0]:
                (h, w), first = reference
                raise TeliError(f"image {path} is {im.shape[1]}x{im.shape[0]} but {first} is {w}x{h}: "
                                f"pass --resize N to resize every image to NxN")
        size = reference[0] if reference else (1, 1)
        arr = np.empty((len(ims), channels, *size), dtype=np.uint8)
        for i, im in enumerate(ims):
            arr[i] = np.repeat(im, channels, axis=2).transpose(2, 0, 1) if im.shape[2] != channels else im.transpose(2, 0, 1)
        out[name] = arr
    return out


def load_folder(path: str, data_root: str, resize: int | None, on_corrupt: str, cache: bool) -> dict:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise TeliError(f"data folder {root} not found: give folder:PATH with PATH/train/<class>/*.png")
    if not (root / "train").is_dir():
        raise TeliError(f"{root} has no train/ folder: expected {root}/train/<class>/*.png (optional unlabelled/, test/)")
    classes, train_files = _class_files(root / "train", None)
    test_files = _class_files(root / "test", classes)[1] if (root / "test").is_dir() else None
    unlabelled = list_images(root / "unlabelled") if (root / "unlabelled").is_dir() else []
    splits = {"train": train_files, **({"test": test_files} if test_files is not None else {})}
    every = [p for files in splits.values() for fs in files for p in fs] + unlabelled

    def build() -> dict[str, np.ndarray]:
        skipped: list[str] = []
        groups, labels = {}, {}
        for split, per_class in splits.items():
            flat = [p for fs in per_class for p in fs]
            ys = np.array([c for c, fs in enumerate(per_class) for _ in fs], dtype=np.int64)
            ims, kept = decode_images(flat, resize, on_corrupt, skipped)
            groups[split] = (ims, [flat[i] for i in kept])
            labels[f"y_{split}"] = ys[kept]
        ims, kept = decode_images(unlabelled, resize, on_corrupt, skipped)
        groups["unlabelled"] = (ims, [unlabelled[i] for i in kept])
        if skipped:
            note(f"skipped {len(skipped)} unreadable image(s) in {root} (data.on_corrupt=skip), first: {skipped[0]}")
        stacked = stack_images(groups)
        return {**{f"x_{k}": v for k, v in stacked.items()}, **labels, "skipped": np.asarray(len(skipped))}

    options = {"resize": resize, "on_corrupt": on_corrupt, "version": 1}
    arrays = cached_arrays(data_root, f"folder-{root.name}-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]}", every, build, options, cache)
    for c, fs in enumerate(train_files):
        if not (arrays["y_train"] == c).any():
            raise TeliError(f"class folder {root / 'train' / classes[c]} has no readable images: fix them or remove the folder")
    out = {"x_train": arrays["x_train"], "y_train": arrays["y_train"], "num_classes": len(classes), "classes": classes}
    if test_files is not None:
        out["x_test"], out["y_test"] = arrays["x_test"], arrays["y_test"]
    if len(arrays["x_unlabelled"]):
        out["x_extra_unlabelled"] = arrays["x_unlabelled"]
    return {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in out.items()}


# ------------------------------------------------------------------------------------------------
# npz


def npz_images(x: np.ndarray, key: str, source: Path) -> np.ndarray:
    where = f"{key} in {source}"
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or (x.shape[1] not in (1, 3) and x.shape[3] not in (1, 3)):
        raise TeliError(f"{where} has shape {tuple(x.shape)}: expected [N, H, W, C] or [N, C, H, W] with C = 1 or 3, or [N, H, W]")
    if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if len(x) == 0:
        raise TeliError(f"{where} holds no images")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if not np.isfinite(x).all() or lo < 0 or hi > 1:
            raise TeliError(f"{where} is float with values in [{lo:g}, {hi:g}] (or NaN): float images must lie in [0, 1]")
        return np.ascontiguousarray(np.rint(x * 255).astype(np.uint8))
    if np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        return np.ascontiguousarray(x.astype(np.uint8))
    raise TeliError(f"{where} has dtype {x.dtype}: expected uint8 (0..255) or float in [0, 1]")


def npz_labels(y: np.ndarray, key: str, n: int, source: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise TeliError(f"{key} in {source} has shape {tuple(y.shape)} and dtype {y.dtype}: expected [N] integer class labels")
    if len(y) != n:
        raise TeliError(f"{source}: {key} has {len(y)} labels but its images {n}: they must match one to one")
    if len(y) and y.min() < 0:
        raise TeliError(f"{key} in {source} holds label {int(y.min())}: labels must run 0..C-1")
    return y.astype(np.int64)


def load_npz(path: str) -> dict:
    source = Path(path).expanduser()
    if not source.is_file():
        raise TeliError(f"npz file {source} not found: give npz:PATH to a file made with numpy.savez")
    try:
        with np.load(source, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise TeliError(f"cannot read {source} as .npz ({(str(err).splitlines() or ['unreadable'])[0]}): save it with numpy.savez") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise TeliError(f"{source} has no '{key}' array (it has: {', '.join(arrays) or 'none'}): "
                            f"expected x_train, y_train, optional x_unlabelled, x_test + y_test")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise TeliError(f"{source} has only one of x_test / y_test: give both, or neither to hold out a test split")
    out = {"x_train": npz_images(arrays["x_train"], "x_train", source)}
    out["y_train"] = npz_labels(arrays["y_train"], "y_train", len(out["x_train"]), source)
    num_classes = int(out["y_train"].max()) + 1
    empty = sorted(set(range(num_classes)) - set(out["y_train"].tolist()))
    if empty:
        raise TeliError(f"y_train in {source} has no images of class {empty[0]}: labels must run 0..C-1 with every class present")
    if "x_test" in arrays:
        out["x_test"] = npz_images(arrays["x_test"], "x_test", source)
        out["y_test"] = npz_labels(arrays["y_test"], "y_test", len(out["x_test"]), source)
        if out["y_test"].max() >= num_classes:
            raise TeliError(f"y_test in {source} holds label {int(out['y_test'].max())}, out of range: y_train's classes are 0..{num_classes - 1}")
    if "x_unlabelled" in arrays:
        out["x_extra_unlabelled"] = npz_images(arrays["x_unlabelled"], "x_unlabelled", source)
    for key in ("x_test", "x_extra_unlabelled"):
        if key in out and out[key].shape[1:] != out["x_train"].shape[1:]:
            raise TeliError(f"{source}: {key.replace('extra_', '')} images are {out[key].shape[1:]} (C, H, W) but x_train's are "
                            f"{out['x_train'].shape[1:]}: they must match")
    return {**{k: torch.from_numpy(v) for k, v in out.items()}, "num_classes": num_classes}


def load_user_data(spec: str, data_root: str, resize: int | None, on_corrupt: str, cache: bool) -> dict:
    kind, _, path = spec.partition(":")
    if kind == "folder" and path:
        return load_folder(path, data_root, resize, on_corrupt, cache)
    if kind == "npz" and path:
        return load_npz(path)
    raise TeliError(f"data source '{spec}' is not folder:PATH or npz:PATH")
