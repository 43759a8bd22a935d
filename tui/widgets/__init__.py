"""Widgets: each renders one thing and posts messages up; none holds session logic."""
