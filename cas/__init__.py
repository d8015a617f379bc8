"""CAS Lab: Channel-wise Activation Suppressing (Bai et al., ICLR 2021) for CIFAR-10, in PyTorch.

Public API (everything the app and the command-line tools use):

* models: :func:`create_model`, :func:`list_models`, :class:`CASModule`;
* checkpoints: :func:`load_model`, :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`read_card`, :class:`CheckpointError`; typed cards: :class:`ModelCard`,
  :func:`read_model_card`, :func:`load_model_and_card`;
* attacks: :func:`run_attack`, :data:`ATTACKS`, :class:`AttackSettings`;
* analysis: :mod:`cas.analysis`; losses: :mod:`cas.losses`; data: :mod:`cas.data`.
"""
from .attacks import ATTACKS, AttackSettings, run_attack
from .checkpoint import (
                         CheckpointError,
                         ModelCard,
                         available_models,
                         load_checkpoint,
                         load_model,
                         load_model_and_card,
                         make_card,
                         pretrained_index,
                         read_card,
                         read_model_card,
                         save_checkpoint,
)
from .data import CLASSES
from .layers import CASModule
from .models import create_model, list_models

__all__ = ["ATTACKS", "available_models", "AttackSettings", "CASModule", "CLASSES", "CheckpointError", "create_model",
           "list_models", "load_checkpoint", "load_model", "load_model_and_card", "make_card", "ModelCard",
           "pretrained_index", "read_card", "read_model_card", "run_attack", "save_checkpoint"]
__version__ = "0.1.0"
