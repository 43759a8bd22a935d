"""v4 agent package."""

if __name__ != "v4.agent":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.agent, not {__name__} (the packages live in the v4 namespace; see README)")
