"""Tasks the service ships: the diagnostic tasks and examples drawn from real use."""
