"""Write the pip requirements of the image's dependency layer (used by the Dockerfile, standard library only).

    python requirements.py DIR   # reads DIR/pyproject.toml; writes DIR/requirements.txt, DIR/constraints.txt

requirements.txt: the project's runtime dependencies (no dev/test extras). When the base image already
has torch (the official PyTorch CUDA images, the CI base image), torch is left out and constraints.txt
pins it to the installed version, so that no dependency can pull another (multi-GB CUDA) torch build.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit(f"ftvar needs Python >= 3.11; the base image has {sys.version.split()[0]}")


def main(folder: Path) -> None:
    deps: list[str] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["dependencies"]
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    name = re.compile(r"^\s*([A-Za-z0-9_.-]+)")
    keep = [d for d in deps if torch is None or name.match(d)[1].lower() != "torch"]  # type: ignore[index]
    (folder / "requirements.txt").write_text("\n".join(keep) + "\n")
    (folder / "constraints.txt").write_text(f"torch=={torch}\n" if torch else "")
    print(f"python {sys.version.split()[0]}; torch {torch or 'absent: installed from the index'}")
    print("requirements:", " ".join(keep))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
