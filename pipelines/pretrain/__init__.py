"""DeepCluster self-supervised pretraining of the model library's encoders (paper §2.3.1).

``pretrain_encoder(model, images, config)`` trains ``model.encoder`` on unlabelled images
(image-level or dense pseudo-labels); the pieces (features, clustering, augmentation, the
uniform-over-clusters sampler, nuisance probes) are public for reuse.
"""

from .augment import Jitter, equivariant, intensity_jitter, random_resized_crops
from .clustering import (
    Assignment,
    PlaceClusters,
    cluster_features,
    cluster_places,
    fit_places,
    kmeans,
    l2_normalise,
    nmi,
    pca_whiten,
    preprocess_features,
    reseed_empty,
)
from .deepcluster import deepcluster, pretrain_encoder
from .features import dense_features, extract_dense, extract_features, iter_dense, pooled
from .images import ImageSource, random_flips
from .probes import image_nuisances, probe
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
    "Jitter",
    "PlaceClusters",
    "ClusterSizes",
    "DeepClusterConfig",
    "DeepClusterResult",
    "EncoderModel",
    "ImageSource",
    "RoundRecord",
    "StopRequested",
    "UniformClusterSampler",
    "cluster_features",
    "cluster_places",
    "dense_features",
    "equivariant",
    "extract_dense",
    "deepcluster",
    "extract_features",
    "fit_places",
    "image_nuisances",
    "intensity_jitter",
    "iter_dense",
    "kmeans",
    "l2_normalise",
    "nmi",
    "pca_whiten",
    "pooled",
    "preprocess_features",
    "probe",
    "pretrain_encoder",
    "random_flips",
    "random_resized_crops",
    "reseed_empty",
]
