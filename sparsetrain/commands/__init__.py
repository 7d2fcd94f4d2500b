"""One module per `sparsetrain` command; each has `register(subparsers)`, which adds its
subparser with `set_defaults(run=fn)`, `fn(args) -> exit status`."""
