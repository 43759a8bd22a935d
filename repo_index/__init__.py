"""repo_index: a repository turned into an ordered, token-counted ContextPlan.

Data flow, one module per step: files (discovery) -> parse (tree-sitter tags) -> resolve (imports to
files) -> graph (dependency order) -> budget (rank, outline, omit) -> plan (segments), with cache
and history feeding them, and `RepoIndex` (index.py) holding it together.
"""

if __name__ != "v4.repo_index":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.repo_index, not {__name__} (the packages live in the v4 namespace; see README)")

from .files import DiscoveryConfig, Skipped
from .index import DEFAULT_BUDGET, IndexConfig, RepoIndex
from .plan import ContextPlan, Segment

__all__ = ["ContextPlan", "DEFAULT_BUDGET", "DiscoveryConfig", "IndexConfig", "RepoIndex", "Segment", "Skipped"]
