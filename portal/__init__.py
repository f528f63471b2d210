"""The portal project: settings, core models and services every app uses."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
