"""v4: the one import namespace this distribution owns.

The design card keeps the packages at the repository's top level (`agent/`, `model/`, `kernels/`,
`repo_index/`, `tui/`), but they are imported and installed only as `v4.agent`, `v4.model`, ... so that
nothing with a generic name reaches site-packages or shadows another distribution (Hugging Face's
`kernels`, which transformers imports). A wheel places them inside this package (pyproject.toml's
`package-dir`); in the source tree they sit beside this folder, so the package's search path takes
in the repository root as well. That is the whole mechanism: plain packages, no import hooks.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

if not (_HERE / "model").is_dir() and (_HERE.parent / "model" / "engine.py").is_file():
    # Source tree (plain or editable): v4.model is the top-level model/ folder beside this one.
    __path__.append(str(_HERE.parent))  # noqa: F821 - a package's __path__ is set before its body runs
