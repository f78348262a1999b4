"""The README's Python examples import names that exist."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_import_in_the_readme_examples_works():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    imports = [
        line
        for block in blocks
        for line in block.splitlines()
        if re.match(r"(from \S+ import |import )", line)
    ]
    assert any("avalanche_spp.metrics" in line for line in imports)
    for line in imports:
        exec(line, {})  # an ImportError names the README line that is wrong
