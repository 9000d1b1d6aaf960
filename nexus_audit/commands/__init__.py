"""The wiring behind each ``nexus-audit`` subcommand: config in, objects built, run.

One module per command; each exposes ``<name>_command(args, settings) -> int``.
"""
