"""vpipe: turn action-recognition video collections into a reusable feature cache."""

__version__ = "0.1.0"
