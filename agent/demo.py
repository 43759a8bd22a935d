"""The demo checkpoint: the tiny random model `v4` opens when no model is named, so a first run works
offline in seconds (its answers are noise, and the UI says so)."""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

DEMO_NAME = "demo-tiny"
RANDOM_WEIGHTS_ANSWER_TOKENS = 256  # random weights write noise: keep a demo's answers short


def has_random_weights(checkpoint: Path | None) -> bool:
    """True for a checkpoint directory `v4 model init` marked as holding random weights (the demo's too)."""
    if checkpoint is None:
        return False
    from v4.model.random_checkpoint import RANDOM_MARKER  # loads torch: asked only of a checkpoint

    return (Path(checkpoint) / RANDOM_MARKER).is_file()


def demo_checkpoint(data_dir: Path | None = None) -> Path:
    """The tiny random checkpoint, created on first use.

    It lives in the per-user data dir (platformdirs) with a RANDOM_WEIGHTS marker, so the UI can say
    that its answers are noise. It is written to a temporary directory and renamed into place, so
    two first runs at once cannot leave half a checkpoint.
    """
    if data_dir is None:
        import platformdirs

        data_dir = Path(platformdirs.user_data_dir("v4"))
    target = data_dir / DEMO_NAME
    if has_random_weights(target):
        return target
    from v4.model.random_checkpoint import init_checkpoint

    data_dir.mkdir(parents=True, exist_ok=True)
    staging = data_dir / f".{DEMO_NAME}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    with resources.as_file(resources.files("v4.repo_index") / "data" / "tokenizer.json") as tokenizer:
        init_checkpoint(staging, "tiny", seed=0, tokenizer_json=tokenizer)
    try:
        staging.rename(target)
    except OSError:  # another process finished first, or a broken leftover is in the way
        if not has_random_weights(target):
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target
