"""Label-free parameter importance of Soft Parameter Pruning (SPP), in plain PyTorch.

Peng et al., arXiv 1812.01640, Sec. 3.1 (eqs. 2-3): for every weight, the second-order Taylor
estimate of how much the model's output entropy changes when the weight is pruned to zero, with the
Hessian diagonal replaced by the Fisher, clamped at zero (:func:`entropy_importance`). Imports
nothing from Avalanche; the Avalanche glue is :mod:`avalanche_spp.plugin`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from avalanche_spp._gradients import (
    EntropyFn,
    ForwardFn,
    _acc_dtype,
    _batch_size,
    _call_model,
    _checked_entropy,
    _linear_layers_covering,
    _per_sample_sums,
    _to_device,
    _vmap_grad_chunks,
)

FISHER_ESTIMATES = ("per_sample", "batch")
TAYLOR_OF = ("entropy", "neg_entropy", "second_order")
CLAMPS = ("experience", "batch", "sample", "none")
PER_SAMPLE_BACKENDS = ("auto", "vmap")

#: Defaults of :func:`entropy_importance` and :class:`avalanche_spp.SPPPlugin`, chosen by measurement
#: (docs/method.md, "Defaults"; docs/results/spp_defaults).
DEFAULT_TAYLOR_OF = "second_order"
DEFAULT_CLAMP = "batch"
DEFAULT_FISHER = "batch"
DEFAULT_LAM = 10.0
DEFAULT_SCALE = "saturate"

SCALES = ("raw", "mean", "saturate")


class DivergedError(ValueError):
    """The importance came out NaN or infinite: the model (or its training) diverged."""


def categorical_entropy(logits: Tensor) -> Tensor:
    """``(B,)``: ``H(q) = -sum_c q_c log q_c`` of the softmax of ``logits`` ``(B, ..., C)`` over the
    last dimension, summed over any dimensions between; ``log_softmax``, so finite when saturated."""
    logq = torch.log_softmax(logits, dim=-1)
    entropy = -(logq.exp() * logq).sum(dim=-1)
    return entropy.reshape(entropy.shape[0], -1).sum(dim=1) if entropy.dim() > 1 else entropy


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """``(B,)``: the entropy of independent Bernoulli outputs (a VAE decoder's pixels) of ``logits``
    ``(B, ...)``, summed over every non-batch dimension. ``H = -p log p - (1 - p) log(1 - p)``,
    ``p = sigmoid(l)``, as ``p * softplus(-l) + (1 - p) * softplus(l)``: finite for any logit."""
    p = torch.sigmoid(logits)
    entropy = p * nn.functional.softplus(-logits) + (1 - p) * nn.functional.softplus(logits)
    return entropy.reshape(entropy.shape[0], -1).sum(dim=1)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters SPP measures and penalises: those with ``requires_grad``.

    Buffers (BatchNorm running statistics) and frozen parameters get no importance.
    """
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def entropy_importance(
    model: nn.Module,
    batches: Iterable[Any],
    forward: ForwardFn | None = None,
    *,
    taylor_of: str = DEFAULT_TAYLOR_OF,
    clamp: str = DEFAULT_CLAMP,
    fisher: str = DEFAULT_FISHER,
    entropy_fn: EntropyFn | None = None,
    max_batches: int | None = None,
    all_reduce: Callable[[Tensor], Any] | None = None,
    per_sample_backend: str = "auto",
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """SPP importance ``Omega`` (paper eq. 3) of every trainable parameter, without labels.

    For every weight ``W_k`` the second-order Taylor estimate of how much a function ``f`` of the
    output distribution changes when the weight is pruned (``delta W_k = -W_k``)::

        Omega_k = max(0, s * g_k * W_k + 1/2 * W_k**2 * F_kk),   g = dH/dW,  F_kk ~ g_k**2

    with ``H = -sum_c q_c log q_c`` the entropy. ``taylor_of`` picks ``f`` and so the sign ``s``,
    ``clamp`` where the ``max(0, .)`` sits. The model is put in eval mode for the pass (dropout
    off, BatchNorm statistics frozen) and its previous per-module modes are restored afterwards.

    Args:
        model: any ``nn.Module``.
        batches: iterable of items. An item is an input tensor ``x`` of shape ``(B, ...)``, or a tuple
            whose tensor entries share their first dimension ``B`` and whose other entries (an ``int``
            task id, say) are passed through unchanged. Labels must not be part of an item.
        forward: ``forward(model, *item) -> output``; defaults to ``model(*item)``. Multi-head models
            pass e.g. ``lambda m, x, t: m.forward_single_task(x, t)``. Per-sample gradients run it
            under ``torch.func.vmap``: no data-dependent Python control flow inside.
        taylor_of: ``"entropy"``: the change of ``H`` itself, ``s = -1`` (``-g W``).
            ``"neg_entropy"``: the change of ``sum_c q_c log q_c = -H`` (the paper's printed ``H``,
            and the authors' code), ``s = +1``. ``"second_order"``: the curvature term alone, the
            same for both (Optimal Brain Damage's saliency), ``s = 0``. The curvature is the Fisher.
        clamp: where ``max(0, .)`` sits. ``"experience"``: once, on the estimate of the whole
            data. ``"batch"``: on each mini-batch's estimate, then averaged (the authors' code;
            ``Omega`` depends on the batch size). ``"sample"``: on each input's own estimate (its
            ``g_n`` and ``g_n**2``), then averaged. ``"none"``: the raw estimate (can be negative).
        fisher: ``"per_sample"``: ``F = mean_n g_n**2``; ``"batch"``: ``F = mean_b (mean_{n in b}
            g_n)**2``, the squared mini-batch gradient (one backward pass per batch; it shrinks as
            the batch grows). ``clamp="sample"`` needs ``"per_sample"``.
        entropy_fn: ``entropy_fn(output) -> (B,)`` per-sample entropy; defaults to
            :func:`categorical_entropy` of logits. VAEs use :func:`bernoulli_entropy`.
        max_batches: use at most this many items of ``batches``.
        all_reduce: in a multi-process run, a function that sums a tensor in place across
            processes (e.g. ``torch.distributed.all_reduce``); each process passes its shard and
            every process gets the ``Omega`` of the whole data.
        per_sample_backend: ``"auto"`` (default): the per-sample Fisher from outer products of each
            ``nn.Linear``'s inputs and output gradients where every parameter sits in one and the
            batch gradient checks out (MLPs), else ``torch.func.vmap``; ``"vmap"``: always vmap.
        chunk_size: ``fisher="batch"`` only: send at most this many samples of an item through the
            model at once and sum their gradients: the same ``Omega`` (up to rounding) in the memory
            of a smaller batch. ``None``: whole items.

    Returns:
        ``{name: Omega}`` with ``Omega`` shaped like the parameter, for every parameter with
        ``requires_grad``, on the parameter's device.

    Raises:
        ValueError: an unknown option or combination, batches that are not an iterable of input
            items (a single tensor, ``(x, y)`` pairs for a one-input model), no trainable
            parameter or no sample.
        DivergedError: a non-finite importance (a diverged model), a subclass of ``ValueError``.
    """
    options = _ImportanceOptions.checked(
        model, batches, taylor_of, clamp, fisher, max_batches, per_sample_backend, chunk_size
    )
    params = trainable_parameters(model)
    forward = forward or _call_model
    entropy_fn = entropy_fn or categorical_entropy
    device = next(iter(params.values())).device
    sums = _ImportanceSums(params, options)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        for index, item in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            inputs = _to_device(_as_tuple(item), device)
            if _batch_size(inputs) == 0:
                continue
            if forward is _call_model and sums.n_samples == 0:
                _check_model_takes(model, inputs)
            sums.add_batch(model, forward, entropy_fn, inputs)
    finally:
        for module, training in modes.items():
            module.train(training)
    return sums.omega(all_reduce, device)


class _ImportanceOptions:
    """The checked options of one :func:`entropy_importance` call."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)

    @classmethod
    def checked(
        cls, model: Any, batches: Any, taylor_of: str, clamp: str, fisher: str, max_batches: Any,
        per_sample_backend: str, chunk_size: Any = None,
    ) -> _ImportanceOptions:  # fmt: skip
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        _check_batches(batches)
        check_form(taylor_of, clamp, fisher)
        check_choice("per_sample_backend", per_sample_backend, PER_SAMPLE_BACKENDS)
        if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
            raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
        if chunk_size is not None and (type(chunk_size) is not int or chunk_size < 1 or fisher != "batch"):
            raise ValueError(f'chunk_size must be None or an int > 0 (fisher="batch"), got {chunk_size!r}')
        params = trainable_parameters(model)
        if not params:
            raise ValueError("the model has no trainable parameter (requires_grad=True): nothing to measure")
        linear_layers = None
        if fisher == "per_sample" and per_sample_backend == "auto":
            linear_layers = _linear_layers_covering(model, params)
        return cls(
            sign={"entropy": -1.0, "neg_entropy": 1.0}.get(taylor_of, 0.0),
            clamp=clamp,
            fisher=fisher,
            linear_layers=linear_layers,
            n_scalars=sum(p.numel() for p in params.values()),
            chunk_size=chunk_size,
        )


class _ImportanceSums:
    """Running sums over the batches of one importance pass.

    ``clamp="experience"`` (and ``"none"``) keeps ``sum_n g_n`` and the curvature sum and forms the
    estimate at the end; ``"batch"`` and ``"sample"`` keep the sum of clamped estimates.
    """

    def __init__(self, params: Mapping[str, Tensor], options: _ImportanceOptions) -> None:
        self.params = params
        self.options = options
        self.weights = {n: p.detach().to(_acc_dtype(p)) for n, p in params.items()}
        self.per_experience = options.clamp in ("experience", "none")
        zeros = {n: torch.zeros_like(w) for n, w in self.weights.items()}  # only the sums this clamp needs
        self.grad_sum = {n: z.clone() for n, z in zeros.items()} if self.per_experience else {}
        self.curv_sum, self.clamped_sum = (zeros, {}) if self.per_experience else ({}, zeros)
        self.n_samples = 0

    def estimate(self, name: str, g: Tensor, curvature: Tensor) -> Tensor:
        """``s * g * W + 1/2 * W**2 * curvature`` (``g`` and ``curvature`` may carry a batch dim)."""
        w = self.weights[name]
        return self.options.sign * g * w + 0.5 * (w * w) * curvature

    def add_batch(self, model: nn.Module, forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple) -> None:
        opts = self.options
        batch_size = _batch_size(inputs)
        if opts.clamp == "sample":
            for name, chunk in _vmap_grad_chunks(
                model, self.params, forward, entropy_fn, inputs, opts.n_scalars
            ):
                clamped = _clamped_estimate(chunk * self.weights[name], self.options.sign)
                self.clamped_sum[name] += clamped.sum(dim=0)
            self.n_samples += batch_size
            return
        if opts.clamp == "batch" and opts.fisher == "batch":
            self._add_batch_estimate(model, forward, entropy_fn, inputs)
            self.n_samples += batch_size
            return
        if opts.fisher == "per_sample":
            g, curv = _per_sample_sums(model, self.params, forward, entropy_fn, inputs, opts)
        else:  # sum_n g_n = B g_b and the batch Fisher's B g_b**2
            grads = zip(
                self.weights.items(), self._mean_grads(model, forward, entropy_fn, inputs), strict=True
            )
            g = {n: batch_size * (torch.zeros_like(w) if x is None else x.to(w.dtype)) for (n, w), x in grads}
            curv = {n: v * v / batch_size for n, v in g.items()}
        for name in self.params:
            if opts.clamp == "batch":
                value = self.estimate(name, g[name] / batch_size, curv[name] / batch_size)
                self.clamped_sum[name] += value.clamp_min(0.0) * batch_size
            else:
                self.grad_sum[name] += g[name]
                self.curv_sum[name] += curv[name]
        self.n_samples += batch_size

    @torch.no_grad()
    def _add_batch_estimate(
        self, model: nn.Module, forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple
    ) -> None:
        """The default form in few passes: with the batch Fisher ``F_b = g_b**2`` the batch's
        estimate is ``s g_b W + 1/2 W**2 g_b**2 = x (s + x / 2)``, ``x = g_b W``."""
        batch_size = _batch_size(inputs)
        with torch.enable_grad():
            grads = self._mean_grads(model, forward, entropy_fn, inputs)
        for name, g in zip(self.params, grads, strict=True):
            if g is None:  # not reached by this batch: its estimate is 0, and so its clamp
                continue
            x, sign = g.to(self.weights[name].dtype).mul_(self.weights[name]), self.options.sign
            if sign == 0.0:  # 1/2 x**2 needs no clamp: one fused pass
                self.clamped_sum[name].addcmul_(x, x, value=0.5 * batch_size)
            else:
                self.clamped_sum[name].add_(_clamped_estimate(x, sign), alpha=batch_size)

    def _mean_grads(self, model: nn.Module, forward: ForwardFn, entropy_fn: EntropyFn, inputs: tuple) -> list:
        """``d mean_n H_n / dW`` of a batch (``None``: not reached), summed over chunks (exact in eval)."""
        batch_size, total = _batch_size(inputs), [None] * len(self.params)
        step = self.options.chunk_size or batch_size
        for start in range(0, batch_size, step):
            part = tuple(x[start : start + step] if isinstance(x, Tensor) else x for x in inputs)
            entropy = _checked_entropy(entropy_fn, forward(model, *part), _batch_size(part)).sum()
            grads = torch.autograd.grad(entropy / batch_size, list(self.params.values()), allow_unused=True)
            total = [  # summed in the accumulation dtype (float32 for a half-precision model)
                t if g is None else g.to(w.dtype) if t is None else t.add_(g)
                for t, g, w in zip(total, grads, self.weights.values(), strict=True)
            ]
        return total

    def omega(self, all_reduce: Callable[[Tensor], Any] | None, device: torch.device) -> dict[str, Tensor]:
        sums = (*self.grad_sum.values(), *self.curv_sum.values(), *self.clamped_sum.values())
        n_samples = self.n_samples
        if all_reduce is not None:
            count = torch.tensor([float(n_samples)], device=device)
            for tensor in (*sums, count):
                all_reduce(tensor)
            n_samples = int(count.item())
        if (n := n_samples) == 0:
            raise ValueError("no input sample to measure importance on: the batches were empty")
        omega = {}
        with torch.no_grad():
            for name, p in self.params.items():
                if self.per_experience:
                    value = self.estimate(name, self.grad_sum[name] / n, self.curv_sum[name] / n)
                    if self.options.clamp == "experience":
                        value = value.clamp_min(0.0)
                else:
                    value = self.clamped_sum[name] / n
                if not torch.isfinite(value).all():
                    raise DivergedError(
                        f"importance of {name!r} has NaN or Inf values: the model's outputs or weights "
                        "are not finite (a diverged model?). Refusing to use it as a penalty."
                    )
                omega[name] = value.to(p.dtype)
        return omega


def _clamped_estimate(x: Tensor, sign: float) -> Tensor:
    """``max(0, s x + x**2 / 2)`` for ``x = g W`` (one new tensor, three passes): the estimate
    whenever the curvature is the same gradient's square (one sample's ``g_n``, or the batch
    Fisher's ``g_b``)."""
    return x.mul(0.5).add_(sign).mul_(x).clamp_min_(0.0)


def check_form(taylor_of: str, clamp: str, fisher: str) -> None:
    """Refuse an unknown ``taylor_of``, ``clamp`` or ``fisher``, or a per-sample clamp without its
    per-sample curvature, with ``ValueError`` naming the allowed values."""
    check_choice("taylor_of", taylor_of, TAYLOR_OF)
    if isinstance(clamp, bool):
        raise ValueError(
            f"clamp must be one of {list(CLAMPS)} (where max(0, .) sits), not a bool: "
            f"clamp={clamp!r} is clamp={'experience' if clamp else 'none'!r}"
        )
    check_choice("clamp", clamp, CLAMPS)
    check_choice("fisher", fisher, FISHER_ESTIMATES)
    if clamp == "sample" and fisher != "per_sample":
        raise ValueError(
            'clamp="sample" clamps each input\'s own estimate, whose curvature is its own g_n**2: '
            'it needs fisher="per_sample"'
        )


def check_choice(name: str, value: Any, allowed: tuple) -> None:
    """Raise ``ValueError`` naming the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _as_tuple(item: Any) -> tuple:
    if isinstance(item, (Tensor, tuple, list)):
        return (item,) if isinstance(item, Tensor) else tuple(item)
    raise ValueError(f"each item of batches must be a Tensor or a tuple of inputs, got {type(item).__name__}")


def _check_batches(batches: Any) -> None:
    """Refuse a ``batches`` argument that is one tensor (it would iterate over rows) or no iterable."""
    if isinstance(batches, Tensor):
        raise ValueError(
            "batches must be an iterable of input batches, got a single tensor of shape "
            f"{tuple(batches.shape)} (iterating it would treat each row as a batch); wrap it in a "
            "list: [x], or split it: x.split(256)"
        )
    if isinstance(batches, (str, bytes, Mapping)) or not isinstance(batches, Iterable):
        raise ValueError(
            "batches must be an iterable of input batches (a list of tensors, a DataLoader of "
            f"inputs, a generator), got {type(batches).__name__}"
        )


def _check_model_takes(model: nn.Module, inputs: tuple) -> None:
    """Refuse an item the model cannot take, such as an ``(x, y)`` pair for a one-input model."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a builtin or otherwise opaque forward: nothing to check
        return
    try:
        signature.bind(*inputs)
    except TypeError:
        kinds = ", ".join(
            f"Tensor{tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__ for x in inputs
        )
        raise ValueError(
            f"an item of batches holds {len(inputs)} entries ({kinds}) but the model's forward "
            f"takes {signature}: items are the model's inputs only. Labels must not be part of "
            "an item: map a loader of (x, y) pairs to its inputs, e.g. (x for x, *_ in loader), "
            "or pass forward= to call the model yourself."
        ) from None
