"""The Textual app over `agent/`: `v4` with no command.

Read in this order: `app.py` (the App: keys, palette, quitting) -> `screens/main.py` (routes the
controllers' messages, `messages.py`, into `state.py` and the widgets) -> `controllers/` (startup,
chat, context, review: plain classes run in thread workers) -> `widgets/` (render, post messages).
"""

if __name__ != "v4.tui":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.tui, not {__name__} (the packages live in the v4 namespace; see README)")
