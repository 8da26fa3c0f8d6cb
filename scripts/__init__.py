"""The `inventory` command and its subcommands."""
