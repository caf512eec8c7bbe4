"""M2Det (Zhao et al., AAAI 2019) in PyTorch: model, priors, post-processing, data, training."""

__version__ = "0.1.0"

from m2det.config import PRESETS, M2DetConfig, get_config
from m2det.errors import M2DetError

__all__ = ["PRESETS", "M2DetConfig", "M2DetError", "get_config", "__version__"]
