"""Quality-gate state machine for staged self-deploys of Docker apps."""

__version__ = "0.1.0"
