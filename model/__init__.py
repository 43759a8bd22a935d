"""v4 model package."""
