"""The policy registry: trained US-agent models by name, each a folder plus a manifest.

Layout (``$VRAGENT_POLICIES``, default ``runs/policies``)::

    runs/policies/<name>/
        manifest.json   # what it is, how it was trained, on what data, and its scores
        model/          # a transformers folder (merged weights + tokenizer), loadable by `hf`
        adapter/        # the LoRA adapter alone, when trained with LoRA (optional)

A *head* policy (``algo: head``, the default grounded US policy) has no ``model/``: it is the
base model plus ``head.safetensors`` (a learned decision head, :mod:`agents.policy_head`), and
``config.grounding`` says its prompts carry the logs' evidence (:mod:`environments.grounding`).
Policies bundled with the package (``agents/policies/``) are found after the registry's.

A scenario names a policy with ``policy: <name>``; its US agents then run that model (the
``hf`` backend loads ``model/``; the ``openai`` backend asks the server for a model served under
the policy's name). The registry lives in ``sandbox`` because the simulator reads it; ``rl``
writes it. The manifest is written last and atomically, so a half-saved policy is never listed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
#: Policies shipped inside the package (small derived artefacts, never data).
BUNDLED = Path(str(files("vragent.agents") / "policies"))
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class PolicyError(ValueError):
    """A policy is missing, unreadable or badly named. The message is one line."""


def policy_root(root: str | Path | None = None) -> Path:
    """The registry folder: ``root``, else ``$VRAGENT_POLICIES``, else ``runs/policies``."""
    return Path(root or os.environ.get("VRAGENT_POLICIES", "runs/policies")).expanduser()


def check_name(name: str) -> str:
    """Return ``name`` when it is a valid policy name (letters, digits, ``._-``).

    Raises:
        PolicyError: the name could escape the registry folder or is empty.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise PolicyError(f"policy name {name!r} is invalid: use letters, digits, '.', '_' "
                          "and '-' (at most 100 characters, not starting with '.' or '-')")
    return name


@dataclass
class PolicyManifest:
    """What a registered policy is.

    Attributes:
        name: the registry name.
        algo: ``sft``, ``grpo`` or ``base`` (an untrained model registered for comparison).
        base_model: the model it was trained from (a folder or ``smollm2``).
        model_id: the name stored with every decision it makes; changes on every retraining,
            so the response cache never serves an older model's answers.
        thinking: trained to reason in ``<think>`` first (False: the no_thinking ablation).
        lora: trained with a LoRA adapter (merged into ``model/``).
        training_run_id: the ``training_runs`` row with its curves.
        data: the training data's manifest (sizes, seed, source run).
        config: the training configuration.
        metrics: evaluation summaries added by ``vragent rl eval``.
        created_at: ISO time.
        git_revision: the code's revision.
        versions: package versions.
    """

    name: str
    algo: str
    base_model: str
    model_id: str
    thinking: bool = True
    lora: bool = False
    training_run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    git_revision: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A registered policy on disk."""

    path: Path
    manifest: PolicyManifest

    @property
    def model_dir(self) -> Path:
        """The transformers folder the ``hf`` backend loads."""
        return self.path / MODEL_DIR

    @property
    def is_head(self) -> bool:
        """A base model plus a learned decision head (no ``model/`` of its own)."""
        return self.manifest.algo == "head"

    @property
    def grounded(self) -> bool:
        """Its prompts carry collaborative evidence (environments.grounding)."""
        return bool(self.manifest.config.get("grounding", False))

    @property
    def adapter_dir(self) -> Path | None:
        """The LoRA adapter folder, when there is one."""
        p = self.path / ADAPTER_DIR
        return p if p.is_dir() else None


def policy_dir(name: str, root: str | Path | None = None) -> Path:
    """Where policy ``name`` lives (it may not exist yet)."""
    return policy_root(root) / check_name(name)


def write_manifest(manifest: PolicyManifest, root: str | Path | None = None) -> Path:
    """Write (or replace) a policy's manifest atomically; the model folder must exist.

    Returns:
        The manifest path.

    Raises:
        PolicyError: the policy folder has no ``model/`` (a head policy: no head file).
    """
    folder = policy_dir(manifest.name, root)
    saved = folder / ("head.safetensors" if manifest.algo == "head" else MODEL_DIR)
    if not saved.exists():
        raise PolicyError(f"{folder}: no {saved.name}; save the model before the manifest")
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True, default=str))
    os.replace(tmp, folder / MANIFEST)  # atomic: readers see the old or the new manifest
    return folder / MANIFEST


def load_policy(name: str, root: str | Path | None = None) -> Policy:
    """A registered policy by name.

    Raises:
        PolicyError: one line naming the policy and the registry when it is missing or its
            manifest is unreadable.
    """
    folder = policy_dir(name, root)
    if not (folder / MANIFEST).is_file() and (BUNDLED / check_name(name) / MANIFEST).is_file():
        folder = BUNDLED / name
    path = folder / MANIFEST
    if not path.is_file():
        raise PolicyError(f"policy {name!r} not found in {policy_root(root)} "
                          "(`vragent rl policies` lists them; `vragent rl train` makes one)")
    try:
        data = json.loads(path.read_text())
        manifest = PolicyManifest(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyError(f"{path}: unreadable policy manifest ({exc})") from None
    if manifest.algo != "head" and not (folder / MODEL_DIR).is_dir():
        raise PolicyError(f"{folder}: the manifest exists but {MODEL_DIR}/ is missing")
    return Policy(folder, manifest)


def list_policies(root: str | Path | None = None) -> list[Policy]:
    """Every readable policy of the registry, then the bundled ones, by name.

    Broken ones are skipped; a registry policy hides a bundled one of the same name.
    """
    names = [m.parent.name for m in sorted(policy_root(root).glob(f"*/{MANIFEST}"))]
    names += [m.parent.name for m in sorted(BUNDLED.glob(f"*/{MANIFEST}"))
              if m.parent.name not in names]
    out = []
    for name in names:
        try:
            out.append(load_policy(name, root))
        except PolicyError:
            continue
    return out


def update_metrics(name: str, key: str, value: Any, root: str | Path | None = None) -> None:
    """Add an evaluation summary to a policy's manifest (``metrics[key] = value``)."""
    pol = load_policy(name, root)
    pol.manifest.metrics[key] = value
    write_manifest(pol.manifest, root)


def remove_policy(name: str, root: str | Path | None = None) -> None:
    """Delete a policy folder (its manifest first, so it stops being listed at once)."""
    folder = policy_dir(name, root)
    (folder / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
