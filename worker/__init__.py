"""The Celery side of the service. Importing this package imports neither torch nor Celery:
the API uses its settings, job state and app factory."""
