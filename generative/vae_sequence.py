"""The paper's VAE experiment (Sec. 4.2.4, Fig. 5) as a command line: faces, then anime faces.

The sequence itself (task 1, then task 2 with plain SGD and with SPP, FID or a fallback FD,
reconstruction errors, Fig.-5-style grids) is :mod:`generative.sequence`; this module turns the
options into a :class:`~generative.sequence.SequenceConfig` and runs it.

Usage::

    python -m generative.vae_sequence --domains fmnist,digits --data-root data --out runs/vae \\
        --image-size 32 --epochs 3 --lam 1 --device cpu --fid-fallback

``--resume`` continues a killed run from its last finished epoch; ``--force`` overwrites one.
"""

from __future__ import annotations

import argparse
import logging
import sys

from avalanche_spp.importance import SCALES, TAYLOR_OF
from benchmarks.errors import DatasetCorruptError
from generative.config import FISHER_CHOICES, SequenceConfig, UsageError
from generative.data import DOMAINS, DatasetNotFoundError
from generative.fid import FALLBACK_LABEL, FIDWeightsNotFoundError
from generative.sequence import run_sequence

log = logging.getLogger("generative.vae_sequence")


def parse_args(argv: list[str] | None = None) -> SequenceConfig:
    """Parse the command line into a :class:`SequenceConfig` (exits with code 2 on errors)."""
    d = SequenceConfig()
    parser = argparse.ArgumentParser(
        prog="python -m generative.vae_sequence",
        description="SPP on a conv VAE: task 1, then task 2 with plain SGD and with SPP; FID (or a "
        "labelled fallback FD), reconstruction errors and Fig.-5-style sample grids.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--domains", default=",".join(d.domains), help=f"task1,task2 from {', '.join(DOMAINS)}")
    add("--data-root", default=d.data_root, help="folder with the domains' files")
    add("--out", default=d.out, help="run directory")
    add("--epochs", type=int, default=d.epochs, help="epochs per task")
    add("--lam", default=",".join(f"{x:g}" for x in d.lam),
        help="SPP strength(s) > 0, comma-separated: one SPP run each")  # fmt: skip
    add("--device", default=d.device, help="cpu, cuda or cuda:N")
    add("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    fd = parser.add_mutually_exclusive_group()
    fd.add_argument(
        "--fid-weights",
        default=None,
        help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default: its cache)",
    )
    fd.add_argument("--fid-fallback", action="store_true", help=f"use the {FALLBACK_LABEL}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out")
    mode.add_argument("--force", action="store_true", help="overwrite the results in --out")
    add("--quiet", action="store_true", help="no progress bars, warnings only")
    add("--image-size", type=int, default=d.image_size, help="side of the square images")
    add("--width", type=int, default=d.width, help="channels of the VAE's first conv")
    add("--depth", type=int, default=d.depth, help="conv layers per side (paper: 2)")
    add("--hidden-dim", type=int, default=d.hidden_dim, help="shared fc width")
    add("--latent-dim", type=int, default=d.latent_dim, help="per-task latent dimension")
    add("--batch-size", type=int, default=d.batch_size)
    add("--lr", type=float, default=d.lr, help="Adam learning rate")
    add("--seed", type=int, default=d.seed)
    add("--max-train", type=int, default=d.max_train, help="cap on training images per domain")
    add("--max-test", type=int, default=d.max_test, help="cap on test images per domain")
    add("--fd-samples", type=int, default=d.fd_samples, help="images per Frechet distance")
    add("--importance-images", type=int, default=d.importance_images, help="images for Omega")
    add("--fisher", default=d.fisher, help=f"one of {', '.join(FISHER_CHOICES)}")
    add("--clamp", default=d.clamp, help="experience, batch or sample (see SPPPlugin)")
    add("--taylor-of", default=d.taylor_of, help=f"one of {', '.join(TAYLOR_OF)} (see SPPPlugin)")
    add("--scale", default=d.scale, help=f"one of {', '.join(SCALES)} (see SPPPlugin)")
    add("--fallback-epochs", type=int, default=d.fallback_epochs)
    add("--fallback-dim", type=int, default=d.fallback_dim, help="fallback feature dimension")
    add("--download", action="store_true", help="let torchvision try to download CelebA")
    add("--num-workers", type=int, default=d.num_workers, help="DataLoader workers")
    add("--threads", type=int, default=d.threads, help="torch CPU threads (0: default)")
    add("--grid-images", type=int, default=d.grid_images, help="images per sample grid")
    args = vars(parser.parse_args(argv))
    args["domains"] = tuple(x.strip() for x in args["domains"].split(",") if x.strip())
    try:
        args["lam"] = tuple(float(x) for x in args["lam"].split(",") if x.strip())
        return SequenceConfig(**args)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0, or 2 after logging a problem the message explains."""
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if config.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
    )
    try:
        metrics = run_sequence(config)
    except (DatasetNotFoundError, DatasetCorruptError, FIDWeightsNotFoundError, UsageError) as err:
        log.error("%s", err)
        return 2
    for run, result in metrics["runs"].items():
        log.info("%s: %s", run, {k: round(v, 5) for k, v in result.items() if isinstance(v, float)})
    log.info("%s; results in %s", metrics["distance_label"], config.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
