"""Mixture-of-experts feed-forward layers: routers (``router.py``), stacked SwiGLU experts
computed with a grouped matmul (``experts.py``) and the layer that joins them
(``layer.py``). Plain single-device PyTorch, like the rest of models/. Only the config is
imported here: models/config.py needs it before the layers can be defined."""

from .config import MoEConfig, RouterConfig

__all__ = ["MoEConfig", "RouterConfig"]
