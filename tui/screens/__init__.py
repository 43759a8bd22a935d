"""Screens: the main chat, the review of pending changes, and help; each with its own .tcss."""
