"""Exceptions raised by the simulators; all derive from :class:`SimulatorError`."""

from wire.errors import EdgeflowError

__all__ = ["SimulatorError", "SimulatorSetupError"]


class SimulatorError(EdgeflowError):
    """Root of every error raised by :mod:`simulators`."""


class SimulatorSetupError(SimulatorError, ValueError):
    """A simulator parameter is invalid, or a simulated server could not start."""
