"""Regenerate the measured tables inside markdown documents from the kept results.

    python -m benchmarks.docs_tables docs/results.md          # rewrite the tables in place
    python -m benchmarks.docs_tables --check docs/results.md  # exit 1 if any table is stale

Blocks ``<!-- summary: DIR -->`` ... ``<!-- end -->`` get the results table of the comparison
in ``DIR`` (relative to the document), blocks ``<!-- include: FILE -->`` ... ``<!-- end -->`` the
text of ``FILE`` (see :func:`benchmarks.report.fill_tables`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import fill_tables


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.docs_tables", description=__doc__.split("\n")[0]
    )
    parser.add_argument("documents", nargs="+", help="markdown files")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale = []
    for name in args.documents:
        path = Path(name)
        if not path.is_file():
            parser.error(f"{path}: no such file")
        text = path.read_text(encoding="utf-8")
        try:
            filled = fill_tables(text, path.parent)
        except FileNotFoundError as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            return 2
        if filled != text:
            stale.append(str(path))
            if not args.check:
                path.write_text(filled, encoding="utf-8")
    if args.check and stale:
        command = "python -m benchmarks.docs_tables " + " ".join(stale)
        print(f"stale tables in {stale}: run {command}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
