"""The `guardq` commands: argument parsing and exit codes only."""
