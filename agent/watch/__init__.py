"""Watch mode: the tree is watched (`watcher`, `layout`), each batch of changes re-plans and re-prefills
the context (`loop`), and comments ending in `AI!` or `AI?` start an agent run (`ai_comments`).
The TUI's watch controller and `v4 watch` both drive `loop.WatchLoop`."""
