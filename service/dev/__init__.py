"""Dev: what `make run` and the tests use to run the whole service on one machine: the
embedded Redis and the development runner.

May import: service.core. Nothing in production imports this package.
"""
