"""`python -m marketplace.cli` runs the `marketplace` command."""

from marketplace.cli.main import main

main()
