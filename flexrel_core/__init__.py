"""FlexRel: pruning by a blend of weight magnitude and LRP relevance (Chiasserini et al., 2025)."""

from .data import DATASETS, DataSplits, load_dataset
from .encoding import (
    MaskCodeCache,
    decode_sparse,
    dense_size_bytes,
    encode_sparse,
    encoded_size,
    information_bound_bits,
)
from .fast_engine import lrp_fast
from .layers import prunable_count, prunable_layers
from .masks import apply_masks, from_torch_prune, get_masks, load_state, mask_gradients, prune, sparsity, to_torch_prune
from .models import MODELS, build_model
from .relevance import lrp_backward, parameter_relevance
from .scores import magnitude, normalize_scores, pruning_scores
from .training import evaluate, select_device, train

__all__ = [
    "decode_sparse",
    "dense_size_bytes",
    "encode_sparse",
    "encoded_size",
    "MaskCodeCache",
    "information_bound_bits",
    "DATASETS",
    "DataSplits",
    "MODELS",
    "build_model",
    "evaluate",
    "load_dataset",
    "select_device",
    "train",
    "apply_masks",
    "from_torch_prune",
    "get_masks",
    "load_state",
    "lrp_backward",
    "lrp_fast",
    "magnitude",
    "mask_gradients",
    "normalize_scores",
    "parameter_relevance",
    "prunable_count",
    "prunable_layers",
    "prune",
    "pruning_scores",
    "sparsity",
    "to_torch_prune",
]
