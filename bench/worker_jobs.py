"""The no-op job stock RQ runs in bench/worker_throughput.py (ours runs the registered diag.echo)."""


def noop() -> None:
    """Do nothing."""
