"""A convolutional VAE with one latent head per task, and its SPP training primitives.

Peng et al., arXiv 1812.01640, Sec. 4.2.4 (Fig. 5): a VAE with a "conv-conv-fc" encoder and an
"fc-deconv-deconv" decoder learns human faces, then anime faces, with "separate latent variable to
train single task". Here:

* **Shared trunk** (what SPP protects): encoder ``depth`` x [conv 4x4 stride 2, ReLU] -> fc -> ReLU;
  decoder fc -> ReLU -> ``depth`` x deconv 4x4 stride 2 (ReLU between, none after the last).
* **Per-task latent heads** (the paper's "separate latent variable"): ``mu_heads[t]`` and
  ``logvar_heads[t]`` (hidden -> latent) on the encoder side, ``latent_heads[t]`` (latent -> hidden,
  ReLU) at the decoder input. Each task has its own posterior ``q_t(z | x)`` and its own map from
  ``z ~ N(0, I)`` into the shared decoder, so learning anime faces never moves the human-face latent
  code; only the shared convolutions and fc layers can forget, and those are what SPP anchors.
* No BatchNorm: running statistics are buffers, not parameters, so SPP could not protect them and
  they would drift to the second domain; the importance pass also needs a pure function of x.

The decoder outputs logits of independent per-pixel Bernoulli distributions (inputs scaled to
``[0, 1]``); the reconstruction term is the binary cross-entropy summed over pixels.

SPP for this label-free model (paper eqs. 3 and 5, :mod:`avalanche_spp.importance`): the paper's
entropy is that of a softmax classifier, which a VAE does not have. The VAE's own output
distribution is the decoder's product of Bernoullis, so
``H(x) = sum_pixels h(sigmoid(decode_t(mu_t(x))))`` with ``h(p) = -p log p - (1 - p) log(1 - p)``,
computed from the posterior *mean* (a pure, deterministic function of ``x``, as ``torch.func``
needs) on the task's own images. A weight whose removal would change how sure the decoder is about
the pixels gets a large ``Omega``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812
from tqdm import tqdm

from avalanche_spp.importance import (
    DEFAULT_CLAMP,
    DEFAULT_FISHER,
    DEFAULT_SCALE,
    DEFAULT_TAYLOR_OF,
    bernoulli_entropy,
    entropy_importance,
)
from avalanche_spp.penalty import mean_importance, scaled_importance, spp_penalty

log = logging.getLogger(__name__)

#: Names of the per-task modules; every other parameter is shared by all tasks.
TASK_HEADS = ("mu_heads", "logvar_heads", "latent_heads")


class ConvVAE(nn.Module):
    """Convolutional VAE with a shared conv/fc trunk and one latent head per task.

    Args:
        image_size: side ``S`` of the square input images; divisible by ``2**depth``.
        channels: ``C``, image channels (3 for RGB).
        width: channels of the first conv layer; layer ``i`` has ``width * 2**i``.
        depth: number of stride-2 conv layers in the encoder (and deconv layers in the decoder);
            the paper uses 2.
        hidden_dim: width of the shared fc layer on each side.
        latent_dim: dimension of each task's latent variable ``z``.
        num_tasks: number of latent heads.

    Shapes: images ``(B, C, S, S)`` in ``[0, 1]``; latents ``(B, latent_dim)``; decoder logits
    ``(B, C, S, S)``.
    """

    def __init__(
        self,
        *,
        image_size: int = 96,
        channels: int = 3,
        width: int = 32,
        depth: int = 2,
        hidden_dim: int = 512,
        latent_dim: int = 128,
        num_tasks: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("channels", channels),
            ("width", width),
            ("depth", depth),
            ("hidden_dim", hidden_dim),
            ("latent_dim", latent_dim),
            ("num_tasks", num_tasks),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if image_size % (2**depth):
            raise ValueError(
                f"image_size must be divisible by 2**depth = {2**depth} (each conv halves it), "
                f"got image_size={image_size}, depth={depth}"
            )
        self.image_size, self.channels, self.latent_dim = image_size, channels, latent_dim
        self.num_tasks = num_tasks
        widths = [channels] + [width * 2**i for i in range(depth)]
        self._feature_shape = (widths[-1], image_size // 2**depth, image_size // 2**depth)
        n_features = widths[-1] * (image_size // 2**depth) ** 2

        encoder: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            encoder += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        self.encoder_convs = nn.Sequential(*encoder)
        self.encoder_fc = nn.Linear(n_features, hidden_dim)
        self.mu_heads = nn.ModuleList(nn.Linear(hidden_dim, latent_dim) for _ in range(num_tasks))
        self.logvar_heads = nn.ModuleList(nn.Linear(hidden_dim, latent_dim) for _ in range(num_tasks))
        self.latent_heads = nn.ModuleList(nn.Linear(latent_dim, hidden_dim) for _ in range(num_tasks))
        self.decoder_fc = nn.Linear(hidden_dim, n_features)
        decoder: list[nn.Module] = []
        reversed_widths = widths[::-1]
        for i, (c_in, c_out) in enumerate(zip(reversed_widths[:-1], reversed_widths[1:], strict=True)):
            decoder.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < depth - 1:
                decoder.append(nn.ReLU())
        self.decoder_deconvs = nn.Sequential(*decoder)

    def _check_task(self, task: int) -> None:
        if not isinstance(task, int) or not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be an int in [0, {self.num_tasks}), got {task!r}")

    def encode(self, x: Tensor, task: int) -> tuple[Tensor, Tensor]:
        """Posterior of task ``task``: ``x (B, C, S, S)`` -> ``mu, logvar``, each ``(B, L)``."""
        self._check_task(task)
        h = F.relu(self.encoder_fc(self.encoder_convs(x).flatten(1)))  # (B, hidden)
        return self.mu_heads[task](h), self.logvar_heads[task](h)

    def decode(self, z: Tensor, task: int) -> Tensor:
        """Decoder of task ``task``: ``z (B, latent)`` -> ``(B, C, S, S)`` Bernoulli logits."""
        self._check_task(task)
        h = F.relu(self.latent_heads[task](z))  # (B, hidden)
        h = F.relu(self.decoder_fc(h)).view(-1, *self._feature_shape)
        return self.decoder_deconvs(h)

    def forward(self, x: Tensor, task: int) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass with the reparameterisation ``z = mu + exp(logvar / 2) * eps``.

        Returns:
            ``(logits (B, C, S, S), mu (B, latent), logvar (B, latent))``.
        """
        mu, logvar = self.encode(x, task)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.decode(z, task), mu, logvar

    def reconstruct_logits(self, x: Tensor, task: int) -> Tensor:
        """Reconstruction logits from the posterior mean, ``decode_t(mu_t(x))``: ``(B, C, S, S)``.

        A pure function of ``x`` (no sampling), used for the importance and the reconstruction
        error.
        """
        mu, _ = self.encode(x, task)
        return self.decode(mu, task)

    @torch.no_grad()
    def sample(self, n: int, task: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images from the prior of task ``task``: ``sigmoid(decode(z))``, ``z ~ N(0, I)``.

        Returns:
            ``(n, C, S, S)`` pixel means in ``[0, 1]``, on the model's device.
        """
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device="cpu").to(device)
        return torch.sigmoid(self.decode(z, task).float())

    def head_parameter_names(self, task: int) -> list[str]:
        """Names of the parameters that belong to task ``task`` only (its three latent heads)."""
        self._check_task(task)
        return [
            f"{head}.{task}.{name}"
            for head in TASK_HEADS
            for name, _ in getattr(self, head)[task].named_parameters()
        ]

    def shared_parameter_names(self) -> list[str]:
        """Names of the parameters shared by all tasks (the convolutions and the two shared fcs)."""
        return [n for n, _ in self.named_parameters() if n.split(".")[0] not in TASK_HEADS]


def vae_loss(logits: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Negative ELBO per image, averaged over the batch.

    ``recon = sum_pixels BCE(sigmoid(logits), x)`` and ``kl = KL(N(mu, exp(logvar)) || N(0, I))
    = -1/2 sum_j (1 + logvar_j - mu_j**2 - exp(logvar_j))``.

    Args:
        logits: ``(B, C, S, S)`` decoder logits.
        x: ``(B, C, S, S)`` targets in ``[0, 1]``.
        mu, logvar: ``(B, latent)``.

    Returns:
        ``(loss, recon, kl)``, scalars (batch means), computed in float32.
    """
    batch = x.shape[0]
    recon = F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="sum") / batch
    mu, logvar = mu.float(), logvar.float()
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
    return recon + kl, recon, kl


@dataclass
class SPPAnchor:
    """What SPP remembers of the previous tasks: anchors ``W*`` and importances ``Omega``.

    Attributes:
        names: parameter names, in the order of the two lists.
        anchors: ``W*`` (detached copies, shaped like the parameters).
        omegas: ``Omega >= 0`` (shaped like the parameters).
    """

    names: list[str]
    anchors: list[Tensor]
    omegas: list[Tensor]

    def penalty(self, model: nn.Module) -> Tensor:
        """``sum_k Omega_k (W_k - W*_k)**2`` (paper eq. 5 without lambda) of ``model``'s weights."""
        params = dict(model.named_parameters())
        return spp_penalty([params[n] for n in self.names], self.anchors, self.omegas)

    def to(self, device: torch.device | str) -> SPPAnchor:
        """A copy on ``device``."""
        return SPPAnchor(
            list(self.names),
            [a.to(device) for a in self.anchors],
            [o.to(device) for o in self.omegas],
        )

    def state_dict(self) -> dict:
        """Plain, picklable state (for checkpoints)."""
        return {"names": list(self.names), "anchors": self.anchors, "omegas": self.omegas}

    @classmethod
    def from_state_dict(cls, state: dict) -> SPPAnchor:
        """Inverse of :meth:`state_dict`."""
        return cls(list(state["names"]), list(state["anchors"]), list(state["omegas"]))


def make_anchor(
    model: nn.Module, omega: dict[str, Tensor], names: Sequence[str], *, scale: str = DEFAULT_SCALE
) -> SPPAnchor:
    """Snapshot ``W*`` of the parameters ``names`` and pair it with their (scaled) ``Omega``.

    Args:
        model: the model after the previous task.
        omega: ``{name: Omega}`` from :func:`task_importance`.
        names: the parameters to anchor (shared ones plus the previous tasks' heads).
        scale: how ``Omega`` weighs the penalty, as ``SPPPlugin(scale=...)``: ``"saturate"``
            (default, ``Omega / (Omega + m)`` with ``m`` the mean over the anchored scalars, so
            ``lam`` has the plugin's meaning), ``"mean"`` or ``"raw"`` (the paper's values).

    Raises:
        ValueError: a name has no importance or is not a parameter of ``model``.
    """
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in omega or n not in params]
    if missing:
        raise ValueError(f"no importance or no parameter for {missing[:5]} (of {len(missing)})")
    with torch.no_grad():
        anchors = [params[n].detach().clone() for n in names]
        raw = [omega[n].detach().to(params[n].device).clone() for n in names]
        mean = mean_importance(raw)
        omegas = [scaled_importance(o, scale, mean) for o in raw]
    return SPPAnchor(list(names), anchors, omegas)


def task_importance(
    model: ConvVAE,
    images: Iterable[Tensor],
    task: int,
    *,
    fisher: str = DEFAULT_FISHER,
    clamp: str = DEFAULT_CLAMP,
    taylor_of: str = DEFAULT_TAYLOR_OF,
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """SPP importance ``Omega`` (paper eq. 3) of every parameter, from the decoder's pixel entropy.

    ``H(x) = bernoulli_entropy(decode_t(mu_t(x)))``: the entropy of the decoder's per-pixel
    Bernoulli distribution, summed over pixels, at the posterior mean of task ``task``, on that
    task's images.

    Args:
        model: the VAE after training on task ``task``.
        images: batches ``(B, C, S, S)`` of the task's own images (no labels).
        task: index of the latent head to use.
        fisher, clamp, taylor_of: as :func:`entropy_importance` (defaults: the plugin's).
        max_batches: use at most this many batches.

    Returns:
        ``{name: Omega}`` for every trainable parameter (other tasks' heads get 0).
    """
    model._check_task(task)
    batches = ((x, task) for x in images)
    return entropy_importance(
        model,
        batches,
        _posterior_mean_logits,
        fisher=fisher,
        clamp=clamp,
        taylor_of=taylor_of,
        entropy_fn=bernoulli_entropy,
        max_batches=max_batches,
    )


def _posterior_mean_logits(model: ConvVAE, x: Tensor, task: int) -> Tensor:
    return model.reconstruct_logits(x, task)


@dataclass
class EpochStats:
    """Measured on one training epoch."""

    epoch: int
    images: int
    seconds: float
    loss: float
    recon: float
    kl: float
    penalty: float

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def train_epoch(
    model: ConvVAE,
    loader: Iterable[Tensor],
    task: int,
    optimizer: torch.optim.Optimizer,
    *,
    epoch: int = 0,
    anchor: SPPAnchor | None = None,
    lam: float = 0.0,
    amp: bool = False,
    progress: bool = False,
    description: str = "",
) -> EpochStats:
    """One epoch of ``loss = -ELBO + lam * sum_k Omega_k (W_k - W*_k)**2`` (paper eq. 5).

    Args:
        model: the VAE (its device is used for the batches).
        loader: batches of images ``(B, C, S, S)`` in ``[0, 1]``.
        task: latent head to train.
        optimizer: over the model's parameters.
        epoch: index, for the stats only.
        anchor: previous tasks' ``W*`` and ``Omega``; ``None`` or ``lam == 0``: no penalty.
        lam: penalty strength ``lambda >= 0``.
        amp: bf16 autocast for the forward pass (CUDA only; the loss is computed in float32).
        progress: show a tqdm bar.
        description: tqdm label.

    Returns:
        Images seen, wall seconds and mean losses of the epoch.
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    device = next(model.parameters()).device
    if amp and device.type != "cuda":
        raise ValueError("amp (bf16 autocast) is only supported on CUDA; drop --amp on CPU")
    use_penalty = anchor is not None and lam > 0
    model.train()
    totals = {"loss": 0.0, "recon": 0.0, "kl": 0.0, "penalty": 0.0}
    n_images, n_batches = 0, 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for x in tqdm(loader, desc=description, disable=not (progress and sys.stderr.isatty()), leave=False):
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits, mu, logvar = model(x, task)
        loss, recon, kl = vae_loss(logits, x, mu, logvar)
        penalty = anchor.penalty(model) if use_penalty else None
        total = loss + lam * penalty if penalty is not None else loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        totals["loss"] += float(loss.detach())
        totals["recon"] += float(recon.detach())
        totals["kl"] += float(kl.detach())
        totals["penalty"] += float(penalty.detach()) if penalty is not None else 0.0
        n_images += x.shape[0]
        n_batches += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if n_batches == 0:
        raise ValueError("the training loader gave no batch: is the dataset empty?")
    if not all(map(_finite, totals.values())):
        raise ValueError(
            f"training diverged on task {task} (non-finite loss {totals}); lower the learning rate or lambda"
        )
    means = {k: v / n_batches for k, v in totals.items()}
    return EpochStats(epoch, n_images, seconds, **means)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


@torch.no_grad()
def reconstruction_error(model: ConvVAE, images: Iterable[Tensor], task: int) -> float:
    """Mean squared error per pixel of ``sigmoid(decode_t(mu_t(x)))`` against ``x``.

    Args:
        model: the VAE (put in eval mode for the pass; its previous mode is restored).
        images: batches ``(B, C, S, S)`` in ``[0, 1]``.
        task: latent head to use.

    Returns:
        ``mean over images and pixels of (x_hat - x)**2``, a float in ``[0, 1]``.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        for x in images:
            x = x.to(device)
            x_hat = torch.sigmoid(model.reconstruct_logits(x, task).float())
            total += float(((x_hat - x) ** 2).sum())
            count += x.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no image to measure the reconstruction error on")
    return total / count


@torch.no_grad()
def generate(model: ConvVAE, n: int, task: int, *, seed: int, batch_size: int = 256) -> Tensor:
    """``n`` samples ``sigmoid(decode_t(z))`` of task ``task``, ``z ~ N(0, I)`` drawn from ``seed``.

    All ``z`` are drawn at once on the CPU, so every model (and every batch size and device) decodes
    the same latent codes: the panels of Fig. 5 differ only by the decoder.

    Returns:
        ``(n, C, S, S)`` float CPU tensor in ``[0, 1]``.
    """
    device = next(model.parameters()).device
    z = torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(seed))  # (n, latent)
    was_training = model.training
    model.eval()
    try:
        chunks = [
            torch.sigmoid(model.decode(chunk.to(device), task).float()).cpu() for chunk in z.split(batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(chunks)
