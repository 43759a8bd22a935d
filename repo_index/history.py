"""How often each file changed: the stability key that orders otherwise-independent files.

Files that change least come first, so an edit invalidates as short a tail of the context as possible.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

# Enough history to rank stability; walking all of a 20-year history costs seconds for no gain.
MAX_COMMITS = 5000


def head_commit(root: Path) -> str | None:
    """The HEAD commit of the repository holding `root`, or None outside git or before a first commit."""
    out = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    return out.strip() or None if out is not None else None


def commit_counts(root: Path, max_commits: int = MAX_COMMITS) -> dict[str, int]:
    """Number of commits (of the last `max_commits`) touching each path, relative to `root`."""
    out = _git(root, "-c", "core.quotepath=off", "log", f"--max-count={max_commits}", "--format=",
               "--name-only", "--no-renames", "--relative", "-z", "--", ".")
    if not out:
        return {}
    return dict(Counter(p for p in out.replace("\n", "\0").split("\0") if p))


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
