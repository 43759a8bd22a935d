"""Exit codes of the `v4` commands, in one place (each command's docstring says which it uses)."""

EXIT_OK = 0
EXIT_FAILED = 1  # the work failed: a load error, no valid edit from the model, a corrupt record
EXIT_USAGE = 2  # the command line or its inputs were wrong; nothing was done
EXIT_REFUSED = 3  # `v4 refactor`: refused because of the work tree's state (uncommitted changes)
EXIT_TESTS = 4  # `v4 refactor --test-cmd`: the tests still fail after the model's fixes
