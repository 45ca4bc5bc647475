"""Faithful PyTorch reference of the bi-layer model's inference path (Zakharov et al., ECCV 2020).

Public API (this package installs as `bilayer_mobile.reference`; it imports nothing else of the
project)::

    model = load_official_checkpoint("runs/<experiment>")  # or load_official_state_dicts(model, {...})
    state = model.init_identity(image, keypoints)
    out = model.render(state, keypoints)
"""
from .checkpoint import fold_spectral_norm, load_official_checkpoint, load_official_state_dicts
from .config import BilayerConfig
from .errors import BilayerError, CheckpointError, ConfigError, InputError, NoFaceError
from .model import BilayerModel, IdentityState, RenderOutput

__all__ = [
    "BilayerConfig",
    "BilayerModel",
    "IdentityState",
    "RenderOutput",
    "load_official_checkpoint",
    "load_official_state_dicts",
    "fold_spectral_norm",
    "BilayerError",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "NoFaceError",
]
