"""What the service and the engines share: animation options, error codes, media header checks.

A leaf package: it imports neither torch nor any other package of this project.
"""

__version__ = "0.1.0"
