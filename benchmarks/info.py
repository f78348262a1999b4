"""What a benchmark is, before any data is read: :class:`BenchmarkInfo` and the registry's entry type."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Keys that make the seeded random streams of one benchmark independent of each other.
_VALIDATION_KEY, _TRAIN_LIMIT_KEY, _EVAL_LIMIT_KEY, _PERMUTATION_KEY = range(4)


SPLITS = ("test", "validation")


MODEL_FAMILIES = ("mlp", "vgg9", "resnet18")


# Smallest square image side each CNN takes: VGG-9 pools three times by 2; ResNet-18 halves the
# image five times, so below 32 its last stage would be less than one pixel wide.
MIN_IMAGE_SIZE = {"vgg9": 8, "resnet18": 32}


@dataclass(frozen=True)
class BenchmarkInfo:
    """What a benchmark is, known without loading any data.

    Attributes:
        name: registry name.
        n_tasks: number of experiences (tasks) T.
        classes_per_task: number of classes of each task, length ``n_tasks``; labels of task ``t``
            are ``0 .. classes_per_task[t] - 1``.
        input_shape: shape of one input sample, e.g. ``(784,)`` or ``(3, 32, 32)``.
        model_family: the paper's network for it: ``"mlp"``, ``"vgg9"`` or ``"resnet18"``.
        needs_data_root: whether the data is read from files under ``data_root``.
        description: one line for listings and reports.
    """

    name: str
    n_tasks: int
    classes_per_task: tuple[int, ...]
    input_shape: tuple[int, ...]
    model_family: str
    needs_data_root: bool
    description: str

    def __post_init__(self) -> None:
        if self.n_tasks < 1 or len(self.classes_per_task) != self.n_tasks:
            raise ValueError(
                f"{self.name}: classes_per_task has {len(self.classes_per_task)} entries, "
                f"n_tasks is {self.n_tasks}; they must agree and be >= 1"
            )
        if self.model_family not in MODEL_FAMILIES:
            raise ValueError(
                f"model_family must be one of {MODEL_FAMILIES}, got {self.model_family!r}"
            )

    @property
    def max_classes_per_task(self) -> int:
        """Width of a single shared head: ``max(classes_per_task)``."""
        return max(self.classes_per_task)


@dataclass(frozen=True)
class _Spec:
    info: BenchmarkInfo
    build: Callable[..., Any]
    options: tuple[str, ...] | None  # keyword options its builder accepts; None: any, passed on
    n_tasks: str  # "prefix": 1..T, the first tasks; "any": any count >= 1; "fixed": T only
