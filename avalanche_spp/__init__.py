"""avalanche-spp: Soft Parameter Pruning (Peng et al., arXiv 1812.01640) for continual learning.

``import avalanche_spp.importance`` needs plain PyTorch only. ``SPPPlugin`` (which needs Avalanche)
is imported lazily on first access, so the math stays usable without Avalanche installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["SPPPlugin", "entropy_importance", "spp_penalty", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from avalanche_spp.importance import entropy_importance, spp_penalty
    from avalanche_spp.plugin import SPPPlugin


def __getattr__(name: str) -> Any:
    if name == "SPPPlugin":
        from avalanche_spp.plugin import SPPPlugin

        return SPPPlugin
    if name in ("entropy_importance", "spp_penalty"):
        from avalanche_spp import importance

        return getattr(importance, name)
    raise AttributeError(f"module 'avalanche_spp' has no attribute {name!r}")
