"""Self-supervised training (paper sections 3.1-3.3): data pipeline, the transformation Phi,
correspondence and mask-embedding losses, space-time clustering, the training loop.

Nothing outside `mevos.train` imports it; it uses model, kernels, runtime, data and eval.
"""

from mevos.train.cluster import ClusterResult, cluster_video, kmeans, position_encoding_3d
from mevos.train.config import PRESETS, TrainConfig, train_preset
from mevos.train.losses import long_loss, seg_forward, seg_loss, short_loss
from mevos.train.trainer import RunOptions, Trainer
from mevos.train.transforms import Transform, apply_batch

__all__ = [
    "TrainConfig", "PRESETS", "train_preset", "Trainer", "RunOptions", "Transform", "apply_batch",
    "short_loss", "long_loss", "seg_forward", "seg_loss", "kmeans", "cluster_video", "ClusterResult",
    "position_encoding_3d",
]
