"""Dashboard: rq-dashboard mounted at /dashboard/ behind auth and cross-site guards, and the
schedules view in its look.

May import: service.api's auth and error helpers and every layer below.
"""
