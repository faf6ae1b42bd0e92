"""mevos: self-supervised video object segmentation, from training to real-time serving.

`import mevos` needs only torch, numpy and pillow; optional extras (onnx, serve, gpu, tensorrt)
are imported where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from mevos.errors import CheckpointError, InputError, MevosError, MissingExtraError, UsageError

__all__ = ["__version__", "MevosError", "InputError", "CheckpointError", "MissingExtraError", "UsageError"]
