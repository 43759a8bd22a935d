"""Build a reproducible git tree of real Python sources for the index benchmark.

Why: our indexer and Aider's RepoMap must be timed on the *same* realistic tree,
and re-runs must see byte-identical input. We copy the first ``num_files`` ``.py``
files (sorted relative paths) of an installed source tree and commit them with a
fixed author and date. Default source: the ``sympy`` and ``torch`` packages of the
project venv (~3.8k .py files; no single installed package reaches 3000). A fixed
package list, not all of site-packages, so reinstalling the project or adding an
unrelated dependency does not shift which files are picked.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PACKAGES = ("sympy", "torch")
FIXED_DATE = "2024-01-01T00:00:00+0000"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com",
       "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]


def site_packages() -> Path:
    """The project venv's site-packages (falls back to this interpreter's)."""
    venv = REPO_ROOT / ".venv"
    found = sorted(venv.glob("lib/python3*/site-packages"))
    return found[0] if found else Path(sysconfig.get_paths()["purelib"])


def _has_commit(dest: Path) -> bool:
    r = subprocess.run(["git", "-C", str(dest), "rev-parse", "--verify", "-q", "HEAD"],
                       capture_output=True)
    return (dest / ".git").exists() and r.returncode == 0


def make_tree(dest: Path, num_files: int = 3000, source: Path | None = None) -> Path:
    """Copy the first ``num_files`` .py files of ``source`` into ``dest`` and commit."""
    dest = Path(dest).resolve()
    if _has_commit(dest):
        return dest
    src = Path(source or site_packages()).resolve()
    tops = [src] if source else [src / pkg for pkg in DEFAULT_PACKAGES]
    rels = sorted(p.relative_to(src).as_posix() for top in tops for p in top.rglob("*.py")
                  if p.is_file() and not p.is_symlink())
    if len(rels) < num_files:
        raise ValueError(f"{src} has only {len(rels)} .py files (< {num_files})")
    for rel in rels[:num_files]:
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out)
    env = {**os.environ, "GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE}
    subprocess.run([*GIT, "-C", str(dest), "init", "-q"], check=True, env=env)
    # Aider's tag cache lands in the tree; keep it out of `git status`/untracked listings.
    (dest / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (dest / ".git" / "info" / "exclude").write_text(".aider*\n")
    for args in (["add", "-A"], ["commit", "-q", "--no-verify", "-m", "bench tree"]):
        subprocess.run([*GIT, "-C", str(dest), *args], check=True, env=env)
    return dest


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--num-files", type=int, default=3000)
    ap.add_argument("--source", type=Path, default=None)
    a = ap.parse_args()
    print(make_tree(a.dest, a.num_files, a.source))
