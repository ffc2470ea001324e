"""The first hour (issue 17): what ``make setup`` installs, and what the setup tells.

The torch tests run ``scripts/install-torch.sh`` (what ``make setup`` runs) as pip dry runs
with no network: pip's configuration is replaced by local folders of wheels that carry the
real metadata of the installed torch and its dependencies (a dry run reads nothing else).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.parse
import warnings
import zipfile
from importlib.metadata import Distribution, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO, real_data_missing

SCRIPT = REPO / "scripts" / "install-torch.sh"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Packages of the CUDA build of torch (the standard Linux wheel on PyPI depends on them).
CUDA = re.compile(r"^(nvidia-|cuda-|triton$)")


def _torch_pin() -> str:
    (pin,) = [r for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    return pin


def _dependency_closure(root: str) -> dict[str, Distribution]:
    """The installed distributions ``root`` needs (no extras), ``root`` included."""
    seen: dict[str, Distribution] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = dist = distribution(name)
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def metadata_only_wheel(dist: Distribution, folder: Path) -> Path:
    """A wheel holding only ``dist``'s real METADATA and WHEEL: all a pip dry run reads."""
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    wheel_info = dist.read_text("WHEEL") or ""
    tag = next(line.split(": ", 1)[1] for line in wheel_info.splitlines()
               if line.startswith("Tag: "))
    info = f"{name}-{dist.version}.dist-info"
    path = folder / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", dist.read_text("METADATA") or "")
        z.writestr(f"{info}/WHEEL", wheel_info)
        z.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """Metadata-only wheels of the installed torch (the +cpu build) and its dependencies."""
    torch = distribution("torch")
    if not torch.version.endswith("+cpu"):
        pytest.skip(f"torch {torch.version} is installed, not the +cpu build (GPU=1?)")
    folder = tmp_path_factory.mktemp("wheels")
    return {name: metadata_only_wheel(dist, folder)
            for name, dist in _dependency_closure("torch").items()}


def _folder(tmp_path: Path, name: str, files: list[Path]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def _install_torch(tmp_path: Path, find_links: Path, cpu_index: str | None = None):
    """Run the script as ``make setup`` does, but as a dry run against local folders only.

    pip's own configuration (this machine's find-links, indexes, constraints) is off; the
    "configured indexes" are an empty index plus ``find_links``.
    """
    (tmp_path / "empty-index").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=(tmp_path / "empty-index").as_uri(),
               PIP_FIND_LINKS=str(find_links), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1")
    if cpu_index is not None:
        env["VRAGENT_TORCH_CPU_INDEX"] = cpu_index
    report = tmp_path / "report.json"
    done = subprocess.run(
        ["bash", str(SCRIPT), sys.executable, "--dry-run", "--ignore-installed", "--report",
         str(report), "-q"], env=env, capture_output=True, text=True, timeout=300)
    installs = json.loads(report.read_text())["install"] if report.exists() else []
    return done, {canonicalize_name(i["metadata"]["name"]): i for i in installs}


def test_torch_pin_admits_the_cpu_build_and_the_gpu_extra_does_not():
    """The project's pin is met by the CPU build the script installs; the gpu extra is not."""
    pin = Requirement(_torch_pin())
    version = str(pin.specifier).removeprefix("==")
    assert pin.specifier.contains(f"{version}+cpu") and pin.specifier.contains(version)
    (gpu,) = map(Requirement, PYPROJECT["project"]["optional-dependencies"]["gpu"])
    assert gpu.name == "torch" and str(gpu.specifier) == f"==={version}"
    assert not gpu.specifier.contains(f"{version}+cpu") and gpu.specifier.contains(version)


def test_make_setup_installs_the_cpu_build_first_and_gpu_1_the_cuda_build(tmp_path):
    venv = tmp_path / "venv"

    def commands(*args: str) -> list[str]:
        done = subprocess.run(["make", "-n", "-B", "setup", f"VENV={venv}", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.splitlines()

    cpu = commands()
    torch_first = cpu.index(f"scripts/install-torch.sh {venv}/bin/python -q")
    assert cpu.index(f"{venv}/bin/pip install -q -e '.[dev]'") == torch_first + 1
    gpu = commands("GPU=1")
    assert f"{venv}/bin/pip install -q -e '.[dev,gpu]'" in gpu
    assert not any("install-torch" in line for line in gpu)


def test_cpu_torch_from_the_configured_indexes_installs_no_cuda_package(tmp_path, wheels):
    """A machine whose pip holds the +cpu wheel locally: taken from there, nothing else."""
    links = _folder(tmp_path, "find-links", list(wheels.values()))
    done, installs = _install_torch(tmp_path, links, cpu_index="file:///nonexistent/cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    version = _torch_pin().removeprefix("torch==")
    assert f"torch=={version}+cpu from the configured indexes" in done.stdout
    assert "trying" not in done.stderr
    assert installs["torch"]["metadata"]["version"] == f"{version}+cpu"
    assert installs["torch"]["download_info"]["url"].startswith(links.as_uri())
    assert set(installs) == set(wheels)  # torch and its dependencies: nothing else
    assert not [n for n in installs if CUDA.match(n)]
    assert not [r for r in installs["torch"]["metadata"].get("requires_dist", [])
                if CUDA.match(r)]


def _stock_pypi(tmp_path: Path, wheels: dict[str, Path]) -> Path:
    """A stand-in for PyPI as a stock Linux machine sees it: torch's dependencies and the
    standard torch wheel, whose metadata is the +cpu build's plus two of its CUDA
    requirements (stand-ins too: metadata-only wheels of those names). No +cpu wheel."""
    folder = _folder(tmp_path, "stock-pypi", [p for n, p in wheels.items() if n != "torch"])
    version = _torch_pin().removeprefix("torch==")
    with zipfile.ZipFile(wheels["torch"]) as z:
        info = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata, wheel_info = z.read(info).decode(), z.read(info[:-8] + "WHEEL").decode()
    metadata = metadata.replace(f"Version: {version}+cpu\n", f"Version: {version}\n", 1)
    metadata = metadata.replace("\nRequires-Dist: ", "\nRequires-Dist: cuda-toolkit==13.0.2; "
                                "platform_system == \"Linux\"\nRequires-Dist: nvidia-cudnn-cu13"
                                "==9.13.0.50; platform_system == \"Linux\"\nRequires-Dist: ", 1)
    tag = wheels["torch"].name.split("-", 2)[2]
    for name, ver, meta, wi, t in (
            ("torch", version, metadata, wheel_info, tag),
            ("cuda_toolkit", "13.0.2", None, None, "py3-none-any.whl"),
            ("nvidia_cudnn_cu13", "9.13.0.50", None, None, "py3-none-any.whl")):
        meta = meta or f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n"
        wi = wi or "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        d = f"{name}-{ver}.dist-info"
        with zipfile.ZipFile(folder / f"{name}-{ver}-{t}", "w") as z:
            z.writestr(f"{d}/METADATA", meta)
            z.writestr(f"{d}/WHEEL", wi)
            z.writestr(f"{d}/RECORD", f"{d}/METADATA,,\n{d}/WHEEL,,\n{d}/RECORD,,\n")
    return folder


def test_on_a_stock_machine_it_takes_the_pytorch_cpu_index_and_no_cuda_package(tmp_path,
                                                                                wheels):
    """Where pip sees only PyPI, the bare pin pulls the CUDA packages (the old Makefile);
    the script finds no +cpu wheel there, adds the PyTorch CPU index (a local copy of its
    layout here) and installs the CPU build with no CUDA package."""
    stock = _stock_pypi(tmp_path, wheels)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    old = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
         "--report", str(tmp_path / "old.json"), "--no-index", "--find-links", str(stock),
         _torch_pin()], env={**env, "PIP_CONFIG_FILE": os.devnull}, capture_output=True,
        text=True, timeout=300)
    assert old.returncode == 0, old.stderr[-3000:]
    old_names = {i["metadata"]["name"] for i in
                 json.loads((tmp_path / "old.json").read_text())["install"]}
    assert {"cuda_toolkit", "nvidia_cudnn_cu13"} <= {n.replace("-", "_") for n in old_names}

    index = tmp_path / "pytorch-cpu"
    (index / "torch").mkdir(parents=True)
    wheel = wheels["torch"]
    (index / "torch" / wheel.name).symlink_to(wheel)
    href = urllib.parse.quote(wheel.name)
    (index / "torch" / "index.html").write_text(f'<a href="{href}">{wheel.name}</a>\n')
    done, installs = _install_torch(tmp_path, stock, cpu_index=index.as_uri())
    assert done.returncode == 0, done.stderr[-3000:]
    version = _torch_pin().removeprefix("torch==")
    assert f"is not on the configured indexes; trying {index.as_uri()}" in done.stderr
    assert f"torch=={version}+cpu from {index.as_uri()}" in done.stdout
    assert installs["torch"]["metadata"]["version"] == f"{version}+cpu"
    assert installs["torch"]["download_info"]["url"].startswith(index.as_uri())
    assert set(installs) == set(wheels)
    assert not [n for n in installs if CUDA.match(n)]


def test_with_no_cpu_wheel_anywhere_it_fails_naming_both_places(tmp_path, wheels):
    links = _folder(tmp_path, "find-links", [p for n, p in wheels.items() if n != "torch"])
    done, installs = _install_torch(tmp_path, links, cpu_index=(tmp_path / "none").as_uri())
    assert done.returncode == 1 and not installs
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("install-torch: error: torch==") and "none" in last, last


def test_license_is_an_spdx_string_setuptools_takes_without_a_warning(monkeypatch):
    """A ``license = {text = …}`` table made setuptools warn three times per install."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution as SetuptoolsDistribution

    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["build-system"]["requires"] == ["setuptools>=77"]  # SPDX form: 77+
    monkeypatch.chdir(REPO)  # readme = "README.md" is read relative to the project
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(SetuptoolsDistribution(), REPO / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert not [str(w.message)[:200] for w in caught if "license" in str(w.message).lower()]


def test_real_data_skips_say_which_folder_is_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("VRAGENT_DATA_DIR", raising=False)
    assert real_data_missing() == "VRAGENT_DATA_DIR is not set"
    monkeypatch.setenv("VRAGENT_DATA_DIR", str(tmp_path / "shared" / "data"))
    assert real_data_missing("movielens-100k") == (
        f"VRAGENT_DATA_DIR={tmp_path}/shared/data: the folder {tmp_path}/shared/data is "
        "missing")
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert real_data_missing() is None
    assert real_data_missing("microlens-100k") == (
        f"VRAGENT_DATA_DIR={tmp_path}/shared/data has no microlens-100k folder "
        f"({tmp_path}/shared/data/microlens-100k)")
    (tmp_path / "shared" / "data" / "microlens-100k").mkdir()
    assert real_data_missing("microlens-100k") is None
