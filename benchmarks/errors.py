"""Errors of the harness's data sets and checkpoints, shared by :mod:`benchmarks` and :mod:`generative`.

Kept in a module of its own (it imports nothing) so that :mod:`benchmarks.streams`,
:mod:`benchmarks.image_data` and :mod:`generative.data` can raise and catch the same class without
importing each other. The library (:mod:`avalanche_spp`) reads no data set and writes no
checkpoint, so it raises none of these.
"""

from __future__ import annotations

__all__ = ["CheckpointMismatchError", "DatasetCorruptError", "DatasetNotFoundError"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set a benchmark needs is not under the data root and could not be downloaded.

    The message names, for each missing data set, the folder and the files expected there and
    where ``docs/datasets.md`` explains how to obtain them. Being a ``FileNotFoundError``, it is
    caught by code that handles missing files in general.
    """


class DatasetCorruptError(ValueError):
    """A data file is present but unreadable: truncated, empty, or not the format expected.

    The message names the file, what is wrong with it (size, magic number, sample counts) and says
    to delete it so that the next run imports or downloads it again (or to replace it with a good
    copy). A ``ValueError``, not a ``DatasetNotFoundError``: code that falls back when data is
    absent must not silently fall back when it is broken.
    """


class CheckpointMismatchError(ValueError):
    """A checkpoint cannot continue this run: it was written by another run, or it is unreadable.

    The message names the file and what differs (method, seed, strength, model, budget...), and
    says to delete the file or drop ``--resume`` to start that run again.
    """
