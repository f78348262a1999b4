"""One table from several comparison folders: a variant study of one method.

    python -m benchmarks.table --out docs/results/spp_variants/table.md \\
        paper_per_sample=docs/results/spp_variants/paper_per_sample \\
        paper_batch=docs/results/spp_variants/paper_batch ...

Each ``LABEL=FOLDER`` is an output folder of ``python -m benchmarks.run``. The table gives, per
folder, the method's chosen strength and mean ± std ACC, BWT and SMT over seeds, the largest
strength that trained and the smallest that diverged on validation, the importance statistics
of its SPP runs (largest Omega, share of zeros, and the SGD stability limit of lambda) and its
times. ``<out>`` gets the markdown (its first line, an HTML comment, is the command that made
it) and ``<out>.json`` the rows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.records import write_json
from benchmarks.report import variant_row, variant_table


@dataclass(frozen=True)
class TableConfig:
    folders: tuple[tuple[str, str], ...]  # (label, comparison folder) pairs, in table order
    out: str  # markdown file; the rows go to <out>.json
    method: str = "spp"  # the method whose row is read from each folder


def parse_args(argv: Sequence[str] | None = None) -> TableConfig:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", metavar="LABEL=FOLDER", help="comparison output folders")
    parser.add_argument("--out", required=True, help="markdown file to write")
    parser.add_argument("--method", default="spp")
    args = parser.parse_args(argv)
    pairs = []
    for item in args.folders:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            parser.error(f"{item!r}: use LABEL=FOLDER, e.g. batch=docs/results/spp_variants/paper_batch")
        if not (Path(folder) / "summary.json").is_file():
            parser.error(f"{folder}: no summary.json; make it with `python -m benchmarks.run --out {folder}`")
        pairs.append((label, folder))
    return TableConfig(folders=tuple(pairs), out=args.out, method=args.method)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        rows = [variant_row(label, folder, config.method) for label, folder in config.folders]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    command = "python -m benchmarks.table " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    table = f"<!-- made by: {command} -->\n" + variant_table(rows)
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    write_json(out.with_suffix(".json"), {"config": asdict(config), "rows": rows})
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
