#!/usr/bin/env bash
# Create an isolated venv with Aider for the RepoMap comparison in bench_index.py.
#
# Why these pins: aider-chat 0.86.2 pins tree-sitter-language-pack 0.13.0, whose wheel
# BUNDLES the compiled grammars (no run-time download, unlike newer language packs),
# with tree-sitter 0.25.2 and grep-ast 0.9.0. Repeating the pins here keeps a resolver
# change from pulling a downloading language pack. Aider lives in its own venv so
# its ~100 dependencies never touch the project's .venv.
#
# Usage: benchmarks/setup_aider.sh [VENV]   (default: benchmarks/.work/aider-venv)
# Idempotent: exits early when the venv already parses Python with RepoMap's stack.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.work/aider-venv}"
PYTHON="${PYTHON:-python3}"
PINS=(aider-chat==0.86.2 tree-sitter-language-pack==0.13.0 tree-sitter==0.25.2 grep-ast==0.9.0)

check() {
  # Offline smoke test: import RepoMap and parse Python with the bundled grammar.
  TQDM_DISABLE=1 LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" - <<'EOF' 2>/dev/null
import aider.repomap  # noqa: F401
from grep_ast.tsl import get_parser
tree = get_parser("python").parse(b"def f():\n    pass\n")
assert "function_definition" in str(tree.root_node)
EOF
}

if [ -x "$VENV/bin/python" ] && check; then
  echo "aider venv OK: $VENV"
  exit 0
fi

mkdir -p "$(dirname "$VENV")"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
check || { echo "aider venv at $VENV failed the offline parse check" >&2; exit 1; }
echo "aider venv ready: $VENV"
