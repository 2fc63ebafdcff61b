"""Run folders: created whole (config.yaml and checkpoints/ from the moment the folder exists), never
overwritten silently, and reopened for --resume only with the config they were made with.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml

from teli.checkpoint import atomic_write_text
from teli.config import RunConfig, to_yaml
from teli.errors import TeliError
from teli.fingerprint import check_allow_list, check_same_config


def create_run_dir(run_dir: Path, cfg: RunConfig, overwrite: bool) -> Path:
    """A new run folder, holding config.yaml and checkpoints/ from the moment it exists (built aside, renamed)."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise TeliError(f"run folder {run_dir} already exists: continue it with --resume {run_dir}, pick another "
                            "--name, or pass --overwrite to replace it")
        if not (run_dir / "config.yaml").is_file():
            raise TeliError(f"--overwrite refused: {run_dir} is not a teli run folder (no config.yaml); remove it yourself")
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".tmp", dir=run_dir.parent))
    atomic_write_text(tmp / "config.yaml", to_yaml(cfg))
    (tmp / "checkpoints").mkdir()
    if run_dir.exists():
        run_dir.rmdir()  # empty
    tmp.rename(run_dir)
    return run_dir


def reopen_run_dir(run_dir: Path, cfg: RunConfig, allow_change: list[str]) -> Path:
    """An interrupted run folder to continue, refused if this run's config differs from the one it was made with."""
    check_allow_list(allow_change)
    if not (run_dir / "config.yaml").is_file():
        raise TeliError(f"--resume {run_dir}: not a teli run folder (no config.yaml): give the folder `teli run` printed")
    if not (run_dir / "checkpoints").is_dir():
        raise TeliError(f"--resume {run_dir}: it has no checkpoints to resume from (no checkpoints/ folder): "
                        "start it again with --overwrite")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    check_same_config(saved, cfg.model_dump(mode="json"), allow_change, f"{run_dir / 'config.yaml'}")
    return run_dir
