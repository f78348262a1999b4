"""Registry of task-incremental Avalanche benchmarks by name.

Every benchmark is *task-incremental with task labels*: experience ``t`` of both streams carries
task label ``t``, the class order is fixed, and class ids restart from zero in each experience, so
a multi-head model has one head of width ``classes_per_task[t]`` per task and a single shared head
of width ``max(classes_per_task)`` is the "single-head" variant (the paper's ``sgd``).

Each benchmark carves a validation part out of its *training* data (stratified by class, seeded,
``validation_fraction`` of it). Training always uses the rest. ``split="validation"`` makes the
returned ``test_stream`` the validation part (for tuning strength hyper-parameters);
``split="test"`` makes it the real test set. Usage::

    from benchmarks.streams import make_benchmark, benchmark_info

    info = benchmark_info("split_fmnist")  # static: tasks, widths, input shape, model family
    bench = make_benchmark("split_fmnist", split="validation", seed=0)
    for experience in bench.train_stream:  # experience.task_label == experience.current_experience
        ...

Registered benchmarks (see :func:`available_benchmarks`):

- ``split_digits`` / ``permuted_digits``: scikit-learn's bundled 8x8 digits (1797 images), flattened
  to 64 floats in [0, 1]; a fixed stratified 30 % test split (seed 0, the same for every ``seed``).
  Needs no file and no network.
- ``split_fmnist`` / ``permuted_fmnist``: torchvision ``FashionMNIST`` under ``data_root``,
  flattened to 784 floats in [0, 1]. Missing files are imported from Debian's
  ``dataset-fashion-mnist`` package, else downloaded.
- ``split_mnist`` / ``permuted_mnist``: torchvision ``MNIST`` under ``data_root``, downloaded where
  a network exists; otherwise :class:`DatasetNotFoundError` says which files to put where.
- ``rotated_fmnist`` / ``rotated_mnist``: the same images, task ``t`` turned ``18 t`` degrees
  (nearest neighbour, blank corners: torchvision's ``rotate``, as in Avalanche's ``RotatedMNIST``).
- ``five_datasets``, ``split_cifar100``, ``split_caltech101``: the paper's image experiments, built
  by :func:`benchmarks.image_data.build` (imported only when one of them is built).

Split benchmarks use the class order 0, 1, ..., 9: task ``t`` holds the original classes ``2t`` and
``2t + 1`` relabelled 0 and 1. Permuted benchmarks give task ``t`` all ten classes with one fixed
pixel permutation; by default task 0 is the *unpermuted* data (the convention of van de Ven's
continual-learning code; Avalanche's ``PermutedMNIST`` permutes every task: ``permute_first=True``).
The permutation of task ``t`` depends only on ``(seed, t)``, so a shorter sequence is a prefix of a
longer one. Images are stored once as ``uint8`` and converted (and permuted) per sample, so ten
permuted Fashion-MNIST tasks share one 47 MB array instead of 1.7 GB of float copies.

``data_root`` defaults to :func:`default_data_root` (``~/.avalanche/data``, Avalanche's own default
dataset location, so data that Avalanche's classic benchmarks downloaded is found).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.builders import _build_permuted, _build_rotated, _build_split, _check_limits

# One error class for every data set of the package (image_data raises it too): a
# FileNotFoundError whose message names the folder, the files expected and how to obtain them.
from benchmarks.errors import DatasetCorruptError, DatasetNotFoundError
from benchmarks.info import MIN_IMAGE_SIZE, SPLITS, BenchmarkInfo, _Spec
from benchmarks.tensor_data import FlatImageDataset, _Arrays, _load_digits, _load_fashion_mnist, _load_mnist

__all__ = [
    "BenchmarkInfo",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "FlatImageDataset",
    "available_benchmarks",
    "benchmark_info",
    "check_benchmark_options",
    "default_data_root",
    "make_benchmark",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def default_data_root() -> Path:
    """Where file-based benchmarks look when no ``data_root`` is given: ``~/.avalanche/data``."""
    return Path.home() / ".avalanche" / "data"


def available_benchmarks() -> list[str]:
    """Names accepted by :func:`make_benchmark`, in registry order."""
    return list(_REGISTRY)


def benchmark_info(
    name: str, *, n_tasks: int | None = None, image_size: int | None = None
) -> BenchmarkInfo:
    """Static description of benchmark ``name`` (no data is loaded).

    Args:
        name: a name from :func:`available_benchmarks`.
        n_tasks: the task count a :func:`make_benchmark` call will use, if not the default; the
            returned info then describes that shorter (or, for permuted ones, longer) sequence.
        image_size: image benchmarks only: the side ``S`` of the square images a
            :func:`make_benchmark` call with the option ``image_size=S`` gives; ``input_shape`` is
            then ``(3, S, S)``. ``None``: the paper's size.

    Raises:
        ValueError: unknown name (the message lists the known ones), an unsupported ``n_tasks``, an
            ``image_size`` for an MLP benchmark or below :data:`MIN_IMAGE_SIZE` of its network.
    """
    spec = _spec(name)
    return _with_image_size(_resize(spec, n_tasks), image_size)


def check_benchmark_options(name: str, *, n_tasks: int | None = None, **options: Any) -> BenchmarkInfo:
    """Check a benchmark's name, task count and options without loading any data.

    Command lines call it while parsing, so that a bad ``--n-tasks`` or ``--train-limit`` is refused
    before any training starts. :func:`make_benchmark` makes the same checks.

    Returns:
        :func:`benchmark_info` for ``n_tasks`` (and ``image_size``, if given).

    Raises:
        ValueError: unknown name, unsupported ``n_tasks``, an option the benchmark does not accept,
            or a ``train_limit`` / ``eval_limit`` that is not an int of at least one sample per class.
    """
    spec = _spec(name)
    info = _with_image_size(_resize(spec, n_tasks), options.get("image_size"))
    if spec.options is not None:
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise ValueError(
                f"{name} does not accept option(s) {unknown}; its options are {sorted(spec.options)}"
            )
        _check_limits(info, options.get("train_limit"), options.get("eval_limit"))
    else:  # an image benchmark: its builder's own options (importing it loads no data)
        from benchmarks import image_data

        allowed = image_data.accepted_options(name)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"{name} does not accept option(s) {unknown}; its options are {list(allowed)}")
    return info


def make_benchmark(
    name: str,
    *,
    split: str = "test",
    seed: int = 0,
    data_root: str | os.PathLike[str] | None = None,
    validation_fraction: float = 0.1,
    n_tasks: int | None = None,
    **options: Any,
) -> Any:
    """Build benchmark ``name`` as an Avalanche benchmark with ``train_stream`` and ``test_stream``.

    Args:
        name: a name from :func:`available_benchmarks`.
        split: ``"test"`` (``test_stream`` is the real test set) or ``"validation"``
            (``test_stream`` is the validation part carved from the training data).
        seed: non-negative int; fixes the validation split, the pixel permutations and any
            sub-sampling. The class order does not depend on it.
        data_root: folder of the data files, default :func:`default_data_root`; not read by the
            embedded digits benchmarks (``benchmark_info(name).needs_data_root`` is False).
        validation_fraction: share of each class's training data held out for validation, in
            (0, 1). Training always uses the remaining ``1 - validation_fraction``.
        n_tasks: number of tasks, default ``benchmark_info(name).n_tasks``. Split benchmarks take
            their first ``n_tasks`` tasks, and so do the image benchmarks (the same tasks, with
            the same seeded class order, as the full sequence's first ones); permuted ones take
            any count >= 1.
        **options: per benchmark. MLP benchmarks: ``train_limit`` (at most this many training
            samples per task, stratified, seeded) and ``eval_limit`` (the same for each task of
            ``test_stream``; permuted benchmarks draw one sub-sample that every task shows under
            its own permutation); permuted ones also ``permute_first`` (default False: task 0 is
            unpermuted); MNIST / Fashion-MNIST also ``download`` (default True). Image benchmarks
            pass every option to :func:`benchmarks.image_data.build`; their ``image_size`` is
            checked first as :func:`benchmark_info` does.

    Returns:
        An Avalanche ``ClassificationScenario`` from ``dataset_benchmark`` (image benchmarks: what
        ``image_data.build`` returns) whose experience ``t`` has task label ``t`` and labels
        ``0 .. classes_per_task[t] - 1``. MLP benchmarks yield ``(x, y, t)`` with ``x`` a flat
        float32 tensor in [0, 1].

    Raises:
        ValueError: unknown name, bad ``split`` / ``seed`` / ``validation_fraction`` / ``n_tasks``,
            a ``data_root`` that is not a path, or an option the benchmark does not accept.
        DatasetNotFoundError: the data files are missing and could not be obtained (or
            ``data_root`` is a file, not a folder).
        DatasetCorruptError: a data file is present but truncated or not in its format.
    """
    spec = _spec(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if (
        isinstance(validation_fraction, bool)
        or not isinstance(validation_fraction, (int, float))
        or not 0.0 < validation_fraction < 1.0
    ):
        raise ValueError(
            "validation_fraction must be a number strictly between 0 and 1, "
            f"got {validation_fraction!r}"
        )
    info = _with_image_size(_resize(spec, n_tasks), options.get("image_size"))
    if data_root is not None and not isinstance(data_root, (str, os.PathLike)):
        raise ValueError(f"data_root must be a folder path (str or Path) or None, got {data_root!r}")
    root = default_data_root() if data_root is None else Path(data_root).expanduser()
    if info.needs_data_root and root.exists() and not root.is_dir():
        raise DatasetNotFoundError(
            f"data_root {root} is a file, not a folder: pass the folder that holds the data sets "
            "(see docs/datasets.md)"
        )
    unknown = sorted(set(options) - set(spec.options)) if spec.options is not None else []
    if unknown:
        raise ValueError(
            f"{name} does not accept option(s) {unknown}; its options are {sorted(spec.options)}"
        )
    return spec.build(
        info,
        split=split,
        seed=seed,
        data_root=root,
        validation_fraction=float(validation_fraction),
        **options,
    )


def _build_image(
    info: BenchmarkInfo,
    *,
    split: str,
    seed: int,
    data_root: Path,
    validation_fraction: float,
    **options: Any,
) -> Any:
    """Delegate to :func:`benchmarks.image_data.build`, imported only now."""
    image_data = importlib.import_module("benchmarks.image_data")
    if info.n_tasks != _REGISTRY[info.name].info.n_tasks:
        options["n_tasks"] = info.n_tasks  # the first n_tasks tasks
    return image_data.build(
        info.name,
        data_root=data_root,
        seed=seed,
        split=split,
        validation_fraction=validation_fraction,
        **options,
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _spec(name: str) -> _Spec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _resize(spec: _Spec, n_tasks: int | None) -> BenchmarkInfo:
    """``spec.info`` for ``n_tasks`` tasks, after checking the count is allowed."""
    info = spec.info
    if n_tasks is None or n_tasks == info.n_tasks:
        return info
    if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1:
        raise ValueError(f"n_tasks must be None or an int >= 1, got {n_tasks!r}")
    if spec.n_tasks == "fixed":
        raise ValueError(f"{info.name} always has {info.n_tasks} tasks; leave n_tasks at None")
    if spec.n_tasks == "any":
        widths = (info.classes_per_task[0],) * n_tasks
    elif n_tasks <= info.n_tasks:  # "prefix": the first n_tasks tasks
        widths = info.classes_per_task[:n_tasks]
    else:
        raise ValueError(
            f"{info.name} has {info.n_tasks} tasks; n_tasks must be between 1 and {info.n_tasks}"
        )
    return replace(info, n_tasks=n_tasks, classes_per_task=widths)


def _with_image_size(info: BenchmarkInfo, image_size: Any) -> BenchmarkInfo:
    """``info`` with ``input_shape`` ``(C, S, S)`` for ``image_size`` S, after checking S fits the network."""
    if image_size is None:
        return info
    if info.model_family == "mlp":
        image_benchmarks = [n for n, s in _REGISTRY.items() if s.info.model_family != "mlp"]
        raise ValueError(
            f"image_size applies to the image benchmarks {image_benchmarks} only; {info.name} is an "
            f"MLP benchmark with inputs of fixed shape {info.input_shape}"
        )
    minimum = MIN_IMAGE_SIZE[info.model_family]
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    if image_size < minimum:
        raise ValueError(
            f"image_size {image_size} is too small for {info.name} (network {info.model_family}): "
            f"the minimum is {minimum} (paper size {info.input_shape[-1]})"
        )
    return replace(info, input_shape=(info.input_shape[0], image_size, image_size))


def _mlp_spec(
    name: str, *, load: Callable[..., _Arrays], kind: str, n_tasks: int, n_pixels: int, about: str
) -> _Spec:
    permuted = kind == "permuted"
    options = ("train_limit", "eval_limit")
    if permuted:
        options += ("permute_first",)
    if load is not _load_digits:
        options += ("download",)
    builder = {"split": _build_split, "permuted": _build_permuted, "rotated": _build_rotated}[kind]

    def build(info: BenchmarkInfo, **kwargs: Any) -> Any:
        return builder(info, load=load, **kwargs)

    per_task = 2 if kind == "split" else 10
    info = BenchmarkInfo(
        name=name,
        n_tasks=n_tasks,
        classes_per_task=(per_task,) * n_tasks,
        input_shape=(n_pixels,),
        model_family="mlp",
        needs_data_root=load is not _load_digits,
        description=about,
    )
    return _Spec(info=info, build=build, options=options, n_tasks="any" if permuted else "prefix")


def _image_spec(
    name: str, *, widths: Sequence[int], shape: tuple[int, ...], family: str, about: str
) -> _Spec:
    info = BenchmarkInfo(
        name=name,
        n_tasks=len(widths),
        classes_per_task=tuple(widths),
        input_shape=shape,
        model_family=family,
        needs_data_root=True,
        description=about,
    )
    return _Spec(info=info, build=_build_image, options=None, n_tasks="prefix")


_SPECS = (
    _mlp_spec(
        "split_digits",
        load=_load_digits,
        kind="split",
        n_tasks=5,
        n_pixels=64,
        about="scikit-learn 8x8 digits, 5 tasks of 2 classes (embedded, no files)",
    ),
    _mlp_spec(
        "permuted_digits",
        load=_load_digits,
        kind="permuted",
        n_tasks=5,
        n_pixels=64,
        about="scikit-learn 8x8 digits, 5 pixel permutations of 10 classes (embedded, no files)",
    ),
    _mlp_spec(
        "split_fmnist",
        load=_load_fashion_mnist,
        kind="split",
        n_tasks=5,
        n_pixels=784,
        about="Fashion-MNIST, 5 tasks of 2 classes",
    ),
    _mlp_spec(
        "permuted_fmnist",
        load=_load_fashion_mnist,
        kind="permuted",
        n_tasks=10,
        n_pixels=784,
        about="Fashion-MNIST, 10 pixel permutations of 10 classes",
    ),
    _mlp_spec(
        "rotated_fmnist",
        load=_load_fashion_mnist,
        kind="rotated",
        n_tasks=10,
        n_pixels=784,
        about="Fashion-MNIST, 10 rotations of 10 classes, 18 degrees apart",
    ),
    _mlp_spec(
        "split_mnist",
        load=_load_mnist,
        kind="split",
        n_tasks=5,
        n_pixels=784,
        about="MNIST, 5 tasks of 2 classes (the paper's Table 2)",
    ),
    _mlp_spec(
        "permuted_mnist",
        load=_load_mnist,
        kind="permuted",
        n_tasks=10,
        n_pixels=784,
        about="MNIST, 10 pixel permutations of 10 classes (the paper's Table 3)",
    ),
    _mlp_spec(
        "rotated_mnist",
        load=_load_mnist,
        kind="rotated",
        n_tasks=10,
        n_pixels=784,
        about="MNIST, 10 rotations of 10 classes, 18 degrees apart (Avalanche's RotatedMNIST kind)",
    ),
    _image_spec(
        "five_datasets",
        widths=(10,) * 5,
        shape=(3, 32, 32),
        family="vgg9",
        about="MNIST, notMNIST, SVHN, STL-10, CIFAR-10 at 3x32x32, 10 classes each (VGG-9)",
    ),
    _image_spec(
        "split_cifar100",
        widths=(5,) * 20,
        shape=(3, 32, 32),
        family="vgg9",
        about="CIFAR-100, 20 tasks of 5 classes (VGG-9)",
    ),
    _image_spec(
        "split_caltech101",
        widths=(30, 25, 25, 22),
        shape=(3, 224, 224),
        family="resnet18",
        about="Caltech-101, 4 tasks of 30/25/25/22 classes at 3x224x224 (ResNet-18)",
    ),
)
_REGISTRY: dict[str, _Spec] = {spec.info.name: spec for spec in _SPECS}
