"""CLI: `python -m service ...`, one click group, thin over the domain layers.

May import: every layer below it (core, tasks, jobs, ops, schedules); never the web app.
"""
