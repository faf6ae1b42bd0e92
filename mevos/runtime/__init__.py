"""Inference: backends behind one interface, the memory bank, and the stream tracker."""

from mevos.runtime.backend import BACKENDS, Backend, TorchBackend, create_backend
from mevos.runtime.tracker import FrameResult, Tracker, TrackerConfig

__all__ = ["Backend", "TorchBackend", "BACKENDS", "create_backend", "Tracker", "TrackerConfig", "FrameResult"]
