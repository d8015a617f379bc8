"""Model registry: ``create_model(name, **kwargs)`` and ``list_models()``."""
from __future__ import annotations

from .base import CASNet, ForwardResult, PointChannels
from .resnet import ResNet18
from .vgg import VGG16
from .wrn import WideResNet, wrn34_10

_REGISTRY = {"resnet18": ResNet18, "vgg16": VGG16, "wrn": WideResNet, "wrn34_10": wrn34_10}
# the paper's three architectures: what the trainer, the converter and the app offer ("wrn" is the
# general WideResNet that cards may describe)
PAPER_ARCHS = ("resnet18", "vgg16", "wrn34_10")
WIDTH_ARCHS = ("resnet18", "vgg16")  # those whose base width is a setting (``width``)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> CASNet:
    """Build a model by name. ``cas=True`` (default) adds CAS modules at the paper's points,
    ``cas=False`` builds the plain baseline; other keywords go to the architecture (``width``,
    ``cas_points``, ``num_classes``, ...)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    return cls(**kwargs)


__all__ = ["PAPER_ARCHS", "WIDTH_ARCHS", "CASNet", "ForwardResult", "PointChannels", "create_model", "list_models"]
