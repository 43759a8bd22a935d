"""Controllers: the TUI's logic as plain classes with keyword-only dependencies, no widgets.

Their blocking methods (git, indexing, inference) are meant for thread workers; they report back
through the `post_message` they are given (see tui/messages.py).
"""
