"""LivePortrait portrait animation: engines, job service and worker."""

__version__ = "0.1.0"
