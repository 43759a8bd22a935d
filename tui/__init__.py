"""v4 tui package."""
