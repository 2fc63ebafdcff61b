"""What a checkpoint must agree on with the run that resumes it: the resolved config, the data, the
teacher cache. Digests are sha256 of the exact bytes; config differences are named key by key.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json

import torch

from teli.errors import TeliError

# Settings that change neither the numbers nor the order of anything trained: --allow-change accepts these.
HARMLESS = ("progress", "*.log_every", "*.eval_every", "checkpoint.every", "checkpoint.keep", "out_dir", "name")
# Where the run folder is: the folder given to --resume wins over what its config.yaml says.
ALWAYS_ALLOWED = ("out_dir", "name")


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(data) -> str:
    """Digest of an SSLData: every image and label the run can see, and how images are prepared."""
    return tensor_digest(data.x_l, data.y_l, data.x_val, data.y_val, data.x_u, data.y_u_hidden, data.x_test, data.y_test,
                         data.mean, data.std)


def config_digest(tree: dict) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config trees (sorted)."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _matches(key: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_allow_list(allow: list[str]) -> None:
    for pattern in allow:
        if not any(fnmatch.fnmatchcase(h, pattern) or pattern == h for h in HARMLESS) and not _matches(pattern, HARMLESS):
            raise TeliError(f"--allow-change {pattern}: only settings that do not change the results may change on resume "
                            f"({', '.join(HARMLESS)})")


def check_same_config(old: dict, new: dict, allow: list[str], where: str) -> None:
    """Refuse a resume whose config differs from the one `where` was made with, naming the first key."""
    for key in config_diff(old, new):
        if _matches(key, ALWAYS_ALLOWED) or (_matches(key, allow) and _matches(key, HARMLESS)):
            continue
        a, b = flatten(old).get(key, "<absent>"), flatten(new).get(key, "<absent>")
        hint = " or pass --allow-change " + key if _matches(key, HARMLESS) else ""
        raise TeliError(f"cannot resume: config key {key} differs from {where} ({a!r} there, {b!r} now): "
                        f"resume with the same settings{hint}, or start a new run")
