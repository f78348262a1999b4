"""Entropy gradients for the importance pass: per batch and per sample.

Per-sample gradients come from ``torch.func.vmap``, chunked so that a chunk holds at most
:data:`_PER_SAMPLE_BUDGET` scalars. Their sums (the per-sample Fisher) have a shortcut: for a model
whose every trainable parameter sits in its own ``nn.Linear`` (called once per forward on
``(B, features)`` rows), sample ``n``'s weight gradient is the outer product ``d_n a_n^T`` of the
layer's output gradient and input, so ``sum_n g_n**2 = (d**2)^T (a**2)`` from one backward pass
(recorded with forward hooks, checked against autograd on every batch). The per-sample clamp needs
every ``g_n`` itself, which the outer products give no faster than vmap, so it always uses vmap.

Private to :mod:`avalanche_spp.importance`, which holds the options and the estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

ForwardFn = Callable[..., Tensor]
EntropyFn = Callable[[Tensor], Tensor]


#: Per-sample gradients held at once by the ``"per_sample"`` estimate (chunk size x parameters).
_PER_SAMPLE_BUDGET = 2**25


def _per_sample_sums(
    model: nn.Module, params: Mapping[str, Tensor], forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple,
    opts: Any,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:  # fmt: skip
    """``sum_n g_n`` and ``sum_n g_n**2`` over one batch: the linear shortcut where it holds, else vmap."""
    recorded = _linear_shortcut(model, params, forward, entropy_fn, inputs, opts.linear_layers)
    if recorded is not None:
        return _linear_sums(params, recorded)
    g_sum = {n: torch.zeros_like(p, dtype=_acc_dtype(p)) for n, p in params.items()}
    curv_sum = {n: torch.zeros_like(p, dtype=_acc_dtype(p)) for n, p in params.items()}
    for name, chunk in _vmap_grad_chunks(model, params, forward, entropy_fn, inputs, opts.n_scalars):
        g_sum[name] += chunk.sum(dim=0)
        curv_sum[name] += (chunk * chunk).sum(dim=0)
    return g_sum, curv_sum


def _call_model(model: nn.Module, *inputs: Any) -> Tensor:
    return model(*inputs)


def _to_device(inputs: tuple, device: torch.device) -> tuple:
    return tuple(x.to(device) if isinstance(x, Tensor) else x for x in inputs)


def _batch_size(inputs: tuple) -> int:
    sizes = {x.shape[0] for x in inputs if isinstance(x, Tensor)}
    if len(sizes) != 1:
        raise ValueError(
            "an item of batches must hold at least one tensor, and all its tensors must share "
            f"their first (batch) dimension; got first dimensions {sorted(sizes)}"
        )
    return sizes.pop()


def _linear_layers_covering(model: nn.Module, params: Mapping[str, Tensor]) -> list[nn.Linear] | None:
    """The ``nn.Linear`` layers holding every trainable parameter, each in one layer only, or ``None``."""
    layers, covered = [], []
    for module in model.modules():
        if type(module) is nn.Linear:
            own = [p for p in (module.weight, module.bias) if p is not None and p.requires_grad]
            if own:
                layers.append(module)
                covered.extend(id(p) for p in own)
    if len(covered) != len(set(covered)) or set(covered) != {id(p) for p in params.values()}:
        return None  # a parameter elsewhere, or one shared by two layers
    return layers


def _linear_shortcut(
    model: nn.Module, params: Mapping[str, Tensor], forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple,
    layers: list[nn.Linear] | None,
) -> dict[nn.Linear, tuple[Tensor, Tensor]] | None:  # fmt: skip
    """Each called layer's inputs ``a`` (B, in) and output gradients ``d`` (B, out) of the summed entropy.

    In eval mode each sample's entropy depends on that sample only, so row ``n`` of ``d`` is sample
    ``n``'s, and the layer's per-sample weight gradient is the outer product ``d_n a_n^T``. Returns
    ``None`` (the caller falls back to ``vmap``) when that does not hold: ``layers`` is ``None`` (a
    parameter outside its own ``nn.Linear``), a layer called more than once or on inputs that are
    not one ``(B, features)`` row per sample, or a weight used outside its layer.
    """
    if layers is None:
        return None
    seen: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}

    def record(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        seen[module].append((args[0], output))
        # Hand a copy to the rest of the network, so an in-place op after the layer (such as
        # ReLU(inplace=True)) cannot change the tensor whose gradient is read.
        return output.clone()

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        batch_size = _batch_size(inputs)
        entropy = _checked_entropy(entropy_fn, forward(model, *inputs), batch_size).sum()
    finally:
        for handle in handles:
            handle.remove()
    used = [layer for layer in layers if seen[layer]]
    for layer in used:
        (a, out), *more = seen[layer]
        if more or a.dim() != 2 or out.dim() != 2 or a.shape[0] != batch_size:
            return None
    outputs = [seen[layer][0][1] for layer in used]
    tensors = list(params.values())
    wrt = outputs + tensors
    # An output that reads no parameter (no layer called) has no gradient at all: every one is zero.
    grads = [None] * len(wrt)
    if entropy.requires_grad:
        grads = list(torch.autograd.grad(entropy, wrt, allow_unused=True))
    recorded = {}
    for layer, d in zip(used, grads[: len(used)], strict=True):
        a = seen[layer][0][0].detach().to(_acc_dtype(layer.weight))
        d = torch.zeros_like(seen[layer][0][1]) if d is None else d
        recorded[layer] = (a, d.detach().to(_acc_dtype(layer.weight)))
    true_grads = {id(p): g for p, g in zip(tensors, grads[len(used) :], strict=True)}
    for layer in layers:
        a, d = recorded.get(layer, (None, None))
        for p, shortcut in (
            (layer.weight, None if a is None else d.T @ a),
            (layer.bias, None if a is None else d.sum(0)),
        ):
            if p is None or not p.requires_grad:
                continue
            true = true_grads.get(id(p))
            true = torch.zeros_like(p) if true is None else true.to(_acc_dtype(p))
            shortcut = torch.zeros_like(true) if shortcut is None else shortcut
            scale = float(true.abs().max()) + float(shortcut.abs().max()) + 1e-30
            if float((true - shortcut).abs().max()) > 1e-4 * scale:
                return None  # the weight is used outside its layer: only vmap sees every use
    return recorded


def _linear_sums(
    params: Mapping[str, Tensor],
    recorded: dict[nn.Linear, tuple[Tensor, Tensor]],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``sum_n g_n = d^T a`` and ``sum_n g_n**2 = (d**2)^T (a**2)`` per layer (zeros if unused)."""
    names = {id(p): n for n, p in params.items()}
    g_sum = {n: torch.zeros_like(p, dtype=_acc_dtype(p)) for n, p in params.items()}
    curv_sum = {n: torch.zeros_like(p, dtype=_acc_dtype(p)) for n, p in params.items()}
    for layer, (a, d) in recorded.items():
        if id(layer.weight) in names:
            name = names[id(layer.weight)]
            g_sum[name], curv_sum[name] = d.T @ a, (d * d).T @ (a * a)  # (out, in) each
        if layer.bias is not None and id(layer.bias) in names:
            name = names[id(layer.bias)]
            g_sum[name], curv_sum[name] = d.sum(0), (d * d).sum(0)  # (out,) each
    return g_sum, curv_sum


def _vmap_grad_chunks(
    model: nn.Module, params: Mapping[str, Tensor], forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple,
    n_scalars: int,
) -> Iterator[tuple[str, Tensor]]:  # fmt: skip
    """Per-sample gradients of any model with ``torch.func.vmap``, a chunk of samples at a time."""
    wrapper = _ForwardModule(model, forward)
    detached = {"model." + name: p.detach() for name, p in params.items()}
    tensor_positions = [i for i, x in enumerate(inputs) if isinstance(x, Tensor)]

    def sample_entropy(weights: dict[str, Tensor], *sample: Tensor) -> Tensor:
        args = list(inputs)
        for position, x in zip(tensor_positions, sample, strict=True):
            args[position] = x.unsqueeze(0)
        output = functional_call(wrapper, weights, tuple(args))
        return _checked_entropy(entropy_fn, output, 1)[0]

    per_sample_grad = vmap(grad(sample_entropy), in_dims=(None, *([0] * len(tensor_positions))))
    batch_size = _batch_size(inputs)
    chunk = max(1, min(batch_size, _PER_SAMPLE_BUDGET // max(n_scalars, 1)))
    for start in range(0, batch_size, chunk):
        grads = per_sample_grad(detached, *[inputs[i][start : start + chunk] for i in tensor_positions])
        for name, p in params.items():
            yield name, grads["model." + name].to(_acc_dtype(p))  # (C, *param.shape)


def _acc_dtype(p: Tensor) -> torch.dtype:
    """Accumulate in float64 for float64 models, else in float32 (also for half precision)."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _checked_entropy(entropy_fn: EntropyFn, output: Tensor, batch_size: int) -> Tensor:
    if not isinstance(output, Tensor):
        raise ValueError(
            "forward must return a tensor of logits (B, ..., C); got "
            f"{type(output).__name__}. Wrap the model's call in `forward` to select the logits."
        )
    entropy = entropy_fn(output)
    if entropy.shape != (batch_size,):
        raise ValueError(
            f"entropy_fn must return one entropy per sample, shape ({batch_size},), got "
            f"{tuple(entropy.shape)}"
        )
    return entropy


class _ForwardModule(nn.Module):
    """Lets ``functional_call`` swap the weights of ``model`` under an arbitrary ``forward``."""

    def __init__(self, model: nn.Module, forward: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self._forward_fn = forward

    def forward(self, *inputs: Any) -> Tensor:
        return self._forward_fn(self.model, *inputs)
