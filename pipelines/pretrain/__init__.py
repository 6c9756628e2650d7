"""DeepCluster self-supervised pretraining of the model library's encoders (paper §2.3.1).

``pretrain_encoder(model, images, config)`` trains ``model.encoder`` on unlabelled images;
the pieces (feature clustering, the uniform-over-clusters sampler) are public for reuse.
"""

from .clustering import (
    Assignment,
    cluster_features,
    kmeans,
    l2_normalise,
    nmi,
    pca_whiten,
    preprocess_features,
    reseed_empty,
)
from .deepcluster import deepcluster, pretrain_encoder
from .features import extract_features, pooled
from .images import ImageSource, random_flips
from .sampler import UniformClusterSampler
from .types import (
    ClusterSizes,
    DeepClusterConfig,
    DeepClusterResult,
    EncoderModel,
    RoundRecord,
    StopRequested,
)

__all__ = [
    "Assignment",
    "ClusterSizes",
    "DeepClusterConfig",
    "DeepClusterResult",
    "EncoderModel",
    "ImageSource",
    "RoundRecord",
    "StopRequested",
    "UniformClusterSampler",
    "cluster_features",
    "deepcluster",
    "extract_features",
    "kmeans",
    "l2_normalise",
    "nmi",
    "pca_whiten",
    "pooled",
    "preprocess_features",
    "pretrain_encoder",
    "random_flips",
    "reseed_empty",
]
