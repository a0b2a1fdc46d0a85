"""`fbsd-hil` and its subcommands (one module each, registered in `harness.cli.main`): the top of the
layers, allowed to import every package below it."""
