"""Tasks: the registry of task names that may run, and the tasks the service ships
(diagnostics, examples drawn from real use, internal hook delivery).

May import: service.core (and, inside a task's body, the jobs layer).
"""
