"""`python -m service ...`: the command-line interface."""

from service.cli.main import cli

cli(prog_name="python -m service")
