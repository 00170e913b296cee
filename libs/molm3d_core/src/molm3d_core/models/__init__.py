"""Models: Uni-Mol 3D encoder, Q-Former, LM with LoRA, and the composite 3D-MoLM."""

from .encoder3d import UniMolConfig, UniMolEncoder
from .lm import DecodingOptions, Generation, LMConfig, MolLM
from .molm3d import PRESETS, MoLM3D, MoLM3DConfig
from .qformer import QFormer, QFormerConfig

__all__ = [
    "PRESETS",
    "DecodingOptions",
    "Generation",
    "LMConfig",
    "MoLM3D",
    "MoLM3DConfig",
    "MolLM",
    "QFormer",
    "QFormerConfig",
    "UniMolConfig",
    "UniMolEncoder",
]
