"""v4 kernels package."""
