"""How the plugin reads a model (what a loss reaches, layers that grew); private to the plugin."""

from __future__ import annotations

import torch
from torch import Tensor


def _only(*terms: list, keep: list[bool]) -> tuple[list, ...]:
    """The entries of each parallel list ``terms`` where ``keep`` is true."""
    return tuple([t for t, k in zip(term, keep, strict=True) if k] for term in terms)


def _leaves_reached(loss: Tensor) -> set:
    """The leaf tensors (parameters) that ``loss``'s autograd graph reaches."""
    leaves, seen = set(), set()
    stack = [loss.grad_fn] if loss.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.add(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def _grow_to(tensor: Tensor, shape: torch.Size, name: str, *, what: str) -> Tensor:
    """Zero-pad ``tensor`` to ``shape`` along dim 0 (new output units, which nothing learned before
    depends on); refuse any other change: grown inputs would no longer line up with the old weights."""
    if tensor.shape == shape:
        return tensor
    same_rank = tensor.dim() == len(shape)
    if same_rank and tensor.dim() > 1 and tuple(tensor.shape[1:]) != tuple(shape[1:]):
        raise ValueError(
            f"parameter {name!r} changed shape from {tuple(tensor.shape)} to {tuple(shape)}: only "
            f"its first (output) dimension may grow, but dimension(s) "
            f"{[d for d in range(1, len(shape)) if tensor.shape[d] != shape[d]]} (inputs) changed. "
            f"SPP's stored {what} cannot follow a layer whose inputs changed: reset the plugin or "
            "keep the input size fixed between experiences."
        )
    if not same_rank or tensor.shape[0] > shape[0]:
        raise ValueError(
            f"parameter {name!r} changed shape from {tuple(tensor.shape)} to {tuple(shape)}: SPP's "
            f"stored {what} only follows layers that grow (new output units). Reset the plugin or "
            "keep the architecture fixed between experiences."
        )
    grown = tensor.new_zeros(shape)
    grown[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return grown
