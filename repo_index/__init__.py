"""repo_index: a repository turned into an ordered, token-counted ContextPlan.

Data flow, one module per step: files (discovery) -> parse (tree-sitter tags) -> resolve (imports to
files) -> graph (dependency order) -> budget (rank, outline, omit) -> plan (segments), with cache
and history feeding them, and `RepoIndex` (index.py) holding it together.
"""

from .files import DiscoveryConfig, Skipped
from .index import DEFAULT_BUDGET, IndexConfig, RepoIndex
from .plan import ContextPlan, Segment

__all__ = ["ContextPlan", "DEFAULT_BUDGET", "DiscoveryConfig", "IndexConfig", "RepoIndex", "Segment", "Skipped"]
