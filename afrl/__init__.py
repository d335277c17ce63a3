"""AFRL relevance: the contract, model loading, the reference scorer and the `afrl` command line.

`from afrl import Reranker` gives the in-process Python API (afrl/reranker.py); it is imported on first use,
so that importing the package (as training and export do) does not pull in the service's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afrl.reranker import Explanation, Reranker

__all__ = ["Explanation", "Reranker"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from afrl import reranker

        return getattr(reranker, name)
    raise AttributeError(f"module 'afrl' has no attribute {name!r}")
