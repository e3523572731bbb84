"""One module per command: each exposes add_arguments(parser) and run(args) -> exit code."""
