"""Affinity models: the U-Net, the registry of shipped weights, and inference."""

from connectome.models.inference import predict_affinities, predict_volume
from connectome.models.registry import (
    WEIGHTS_DIR,
    LoadedModel,
    ModelInfo,
    available_models,
    load_model,
    read_info,
    save_model,
)
from connectome.models.unet import NEAREST_OFFSETS, UNet, UNetConfig, preset

__all__ = [
    "WEIGHTS_DIR",
    "NEAREST_OFFSETS",
    "LoadedModel",
    "ModelInfo",
    "UNet",
    "UNetConfig",
    "available_models",
    "load_model",
    "predict_affinities",
    "predict_volume",
    "preset",
    "read_info",
    "save_model",
]
