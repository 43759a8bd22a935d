"""Time Aider's RepoMap on a git tree; run INSIDE the aider venv (see setup_aider.sh).

Usage: python aider_repomap_probe.py ROOT [--map-tokens N] [--warm]
Prints one JSON line to stdout (elapsed_s covers RepoMap() + get_repo_map; list_s is
`git ls-files`); aider's own messages go to stderr.

Why the stand-ins: RepoMap only calls ``main_model.token_count`` and ``io``'s
read_text/tool_output/tool_warning/tool_error. A real ``aider.models.Model`` loads
litellm and downloads a tokenizer (network); ``InputOutput`` loads prompt_toolkit.
Minimal objects keep the timing about tag extraction, ranking and rendering. Cold by
default: the tag cache is deleted first, so get_ranked_tags parses every file.
"""

from __future__ import annotations

import argparse, contextlib, json, os, resource, shutil, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar noise
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # defensive, unused here
from aider.repomap import RepoMap  # noqa: E402


class StandInModel:
    def token_count(self, text: str) -> int:  # ~4 chars per token, no tokenizer download
        return len(text) // 4


class StandInIO:
    encoding = "utf-8"

    def read_text(self, filename: str, silent: bool = False) -> str | None:
        try:  # same contract as aider.io.InputOutput.read_text
            return Path(filename).read_text(encoding=self.encoding)
        except (OSError, UnicodeError):
            return None

    def tool_output(self, *a: object, **k: object) -> None:
        print(*a, file=sys.stderr)
    tool_warning = tool_error = tool_output


class CountingRepoMap(RepoMap):
    num_tags = 0
    num_defs = 0

    def get_tags(self, fname: str, rel_fname: str) -> list:
        tags = super().get_tags(fname, rel_fname)
        self.num_tags += len(tags)
        self.num_defs += sum(t.kind == "def" for t in tags)
        return tags


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", type=Path)
    ap.add_argument("--map-tokens", type=int, default=1024)
    ap.add_argument("--warm", action="store_true", help="keep the tag cache")
    a = ap.parse_args()
    root = a.root.resolve()
    if not a.warm:
        for d in root.glob(".aider.tags.cache.v*"):
            shutil.rmtree(d)
    t0 = time.perf_counter()
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"],
                         check=True, capture_output=True, text=True).stdout
    files = [str(root / f) for f in out.split("\0") if f]
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        rm = CountingRepoMap(map_tokens=a.map_tokens, root=str(root), main_model=StandInModel(),
                             io=StandInIO(), verbose=False, refresh="always")
        repo_map = rm.get_repo_map(chat_files=[], other_files=files, force_refresh=True)
    t2 = time.perf_counter()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"elapsed_s": round(t2 - t1, 3), "list_s": round(t1 - t0, 3),
                      "num_files": len(files), "map_chars": len(repo_map or ""),
                      "num_tags": rm.num_tags, "num_defs": rm.num_defs,
                      "peak_rss_mb": round(rss_mb, 1)}))


if __name__ == "__main__":
    main()
