"""v4 agent package."""
