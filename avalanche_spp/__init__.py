"""avalanche-spp: Soft Parameter Pruning (Peng et al., arXiv 1812.01640) for continual learning.

``avalanche_spp.importance`` (the importance) and ``avalanche_spp.penalty`` (the penalty) need plain
PyTorch only; ``avalanche_spp.metrics`` needs numpy only. ``SPPPlugin`` (which needs Avalanche)
is imported lazily on first access, so the math stays usable without Avalanche installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SPPPlugin", "entropy_importance", "spp_penalty", "__version__"]
_HOMES = {"SPPPlugin": "plugin", "entropy_importance": "importance", "spp_penalty": "penalty"}

if TYPE_CHECKING:  # pragma: no cover
    from avalanche_spp.importance import entropy_importance
    from avalanche_spp.penalty import spp_penalty
    from avalanche_spp.plugin import SPPPlugin


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"avalanche_spp.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'avalanche_spp' has no attribute {name!r}")
