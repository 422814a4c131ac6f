"""`python -m service ...`: the command-line interface."""

from service.cli import cli

cli(prog_name="python -m service")
