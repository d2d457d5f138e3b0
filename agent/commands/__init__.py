"""Sub-commands of `gate-agent`: one module per group, each with `register(subparsers, common)`.

`common` is a parent parser carrying `--config`; pass it as `parents=[common]` to every
sub-command so `--config PATH` works everywhere.
"""
