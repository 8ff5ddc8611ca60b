"""The `marketplace` command line."""
