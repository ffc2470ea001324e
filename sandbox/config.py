"""Scenario files: one pydantic tree, validated strictly.

An unknown key or a wrong type is a one-line error that names the file and the key, e.g.
``scenarios/x.yaml: simulation.steps: Input should be greater than 0``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from vragent.environments.sources import InteractionsOptions
from vragent.sandbox.settings import (  # noqa: F401 (re-exported: the settings' one home)
    ConfigError,
    ConfigModel,
    _Strict,
    safe_yaml,
    validation_line,
)

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
#: Largest scenario file read (bytes): the bundled ones are under 5 KB, and an endless file
#: (``/dev/zero``, a FIFO that never closes) must fail at once rather than fill memory.
MAX_SCENARIO_BYTES = 1 << 20
#: Largest seed: numpy's legacy and torch's generators take at most 32 bits, and the A/B
#: seeds ``seed + k`` must still fit the store's 64-bit integer.
MAX_SEED = 2**32 - 1


class ScenarioError(ValueError):
    """A scenario file is missing, unreadable or invalid. The message is one line."""


class DatasetConfig(InteractionsOptions):
    """Where the real (or synthetic) logs come from.

    ``items_path``, ``columns``, ``like_threshold`` and ``sep`` (from
    :class:`~environments.sources.InteractionsOptions`) are for ``kind: interactions`` only.
    """

    kind: Literal["movielens-100k", "movielens-1m", "microlens", "interactions", "synthetic"
                  ] = "movielens-100k"
    path: str | None = Field(
        None, description="Data folder (MovieLens: or its .zip; interactions: the CSV or "
        "Parquet log). None: the embedded MovieLens-100K asset, or "
        "$VRAGENT_DATA_DIR/<default folder> for MicroLens.")
    min_len: int = Field(5, ge=2, description="Users with fewer interactions are dropped.")
    max_len: int = Field(13, ge=3, description="Sequences are cut to their last max_len items.")
    synthetic: dict[str, Any] = Field(
        default_factory=dict, description="Arguments of make_synthetic_world.")

    @model_validator(mode="after")
    def _interactions_options(self) -> DatasetConfig:
        defaults = DatasetConfig.model_construct()
        given = [k for k in _INTERACTIONS_ONLY if getattr(self, k) != getattr(defaults, k)]
        if self.kind != "interactions" and given:
            raise ValueError(f"{given[0]} is only for kind 'interactions'")
        if self.kind == "interactions" and not self.path:
            raise ValueError("kind 'interactions' needs a path (the CSV or Parquet log)")
        return self

    def loader_options(self) -> dict[str, Any]:
        """Loader keyword arguments beyond the path (``load_dataset(kind, path, **these)``)."""
        if self.kind != "interactions":
            return {}
        items = _expand(self.items_path) if self.items_path else None
        return {"items_path": items, "columns": self.columns.model_dump(),
                "like_threshold": self.like_threshold, "sep": self.sep}


_INTERACTIONS_ONLY = tuple(InteractionsOptions.model_fields)


def _expand(path: str) -> str:
    """``$VARS`` and ``~`` expanded, as for ``dataset.path``."""
    return str(Path(os.path.expandvars(path)).expanduser())


class PopulationConfig(_Strict):
    """Which real users become simulated users."""

    size: int = Field(8, ge=1)
    sampling: Literal["random", "first", "stratified"] = Field(
        "random", description="stratified: equal shares of light, medium and heavy users "
        "(terciles of real history length), so both ends of activity are simulated.")
    history_len: int = Field(10, ge=0, description="Real history titles shown in the prompt.")
    recent_len: int = Field(5, ge=0, description="Simulated watches shown in the prompt.")
    history_cap: int | None = Field(
        None, ge=1, description="Keep only each simulated user's first N real interactions, "
        "for the prompt and for every recommender: a cold-start population.")


class SessionConfig(_Strict):
    """How decisions become likes and exits (docs/user-actions.md)."""

    @field_validator("like_share")
    @classmethod
    def _share_in_unit(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and not 0 <= v <= 1:
            raise ValueError("like_share must be between 0 and 1, or 'real'")
        return v

    like_share: float | Literal["real"] = Field(
        0.5, description="Share of positive decisions that are likes; 'real': the dataset's "
        "own (MovieLens: ratings >= 4 among rated; MicroLens: likes per view).")
    base_leave_prob: float = Field(0.05, ge=0, le=1)
    bored_leave_prob: float = Field(0.3, ge=0, le=1)


class SimulationConfig(_Strict):
    """Length and shape of the simulation."""

    steps: int = Field(2, gt=0)
    slate_size: int = Field(5, gt=0, le=100)
    activation_prob: float = Field(
        1.0, gt=0, le=1, description="Chance a user is active in a step."
    )
    users_per_task: int = Field(8, gt=0, description="Users per fan-out task (one Send).")
    refit_every: int = Field(0, ge=0, description="Refit recommenders every K steps; 0 = never.")
    session: SessionConfig = Field(default_factory=SessionConfig)


class ArmConfig(_Strict):
    """One recommender arm."""

    name: str = Field(min_length=1, max_length=100)
    recommender: str
    params: dict[str, Any] = Field(default_factory=dict)
    inject_friends_likes: int | None = Field(
        None, ge=0, description="This arm's social.inject_friends_likes (None: the scenario's), "
        "so a social feed can be A/B tested against a plain one.")
    item_text: Literal["title", "profile", "title+profile"] = Field(
        "title", description="What a text-tower recommender (sasrec with tower: text) reads "
        "per item; items the IP agent has not profiled yet use their title.")

    @model_validator(mode="after")
    def _known_recommender(self) -> ArmConfig:
        # Here rather than when the run builds its platform, so that a typo is a one-line
        # error at load and no run is created for a scenario that cannot start.
        from vragent.environments.recommenders import check_recommender

        check_recommender(self.recommender, self.params)
        return self


class PricesConfig(_Strict):
    """Token prices for the cost estimate of the metering table (any one currency)."""

    input_per_1m: float = Field(ge=0, description="Price of a million prompt tokens.")
    output_per_1m: float = Field(ge=0, description="Price of a million completion tokens.")


class BackendConfig(_Strict):
    """The LLM behind the agents."""

    kind: Literal["hf", "hf-vision", "openai", "tiny", "tiny-vision", "constant"] = "hf"
    model: str = Field("smollm2", description="'smollm2' (embedded asset), a model folder, or the "
                       "served model name for openai. hf-vision: an image-text-to-text model "
                       "folder. tiny / tiny-vision: random test models.")
    decision_mode: Literal["score", "generate"] = "score"
    batch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.7, ge=0)
    trace_rate: float = Field(0.1, ge=0, le=1)
    max_prompt_tokens: int = Field(1024, gt=16)
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the env var with the key.")
    max_concurrency: int = Field(8, gt=0)
    prefill: bool = True
    threads: int | None = Field(None, gt=0)
    # hf backend
    device: str = Field("auto", description="hf: 'auto' (first GPU, else CPU), 'cpu', 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="hf: 'auto' is float32 on CPU and bfloat16 on GPU.")
    kv_cache_mb: int = Field(1024, ge=0, description="hf: memory for users' prefix KV caches "
                             "kept across slates, arms and steps (0 = none).")
    quantize: Literal["none", "int8"] = Field(
        "none", description="hf on the CPU: int8 dynamic quantisation of the decoder's linear "
        "layers (faster, slightly different numbers; docs/performance.md). Opt-in.")
    p_yes: float = Field(0.3, ge=0, le=1, description="constant backend only.")
    # openai backend
    base_urls: list[str] | None = Field(
        None, description="More API base URLs (joined with base_url): requests are balanced "
        "over the healthy ones (fewest in flight) and fail over when one is down.")
    score_api: Literal["completions", "chat"] = Field(
        "completions", description="completions: exact prompt text to /v1/completions, "
        "first-token top logprobs; chat: chat completions with top_logprobs.")
    tokenizer: str | None = Field(
        None, description="Render the completions prompt locally with this transformers "
        "folder's chat template ('smollm2': the embedded asset); None: the server's /tokenize.")
    timeout_s: float = Field(60.0, gt=0, description="Deadline of each request attempt: "
                             "connecting, the headers and the whole body (a server that "
                             "drips its answer is cut off too).")
    max_retries: int = Field(4, ge=0, description="Retries of a failed request (connection, "
                             "timeout, 408/429/5xx, broken response).")
    backoff_base_s: float = Field(0.2, ge=0, description="First backoff ceiling; doubles per "
                                  "retry, full jitter.")
    backoff_max_s: float = Field(5.0, ge=0, description="Backoff ceiling.")
    guided: Literal["none", "regex", "json"] = Field(
        "none", description="Constrain judgement completions to the <think>/<answer> shape "
        "(vLLM structured outputs).")
    guided_key: Literal["structured_outputs", "guided"] = Field(
        "structured_outputs", description="structured_outputs: vLLM >= 0.12 "
        "({'structured_outputs': {'regex': ...}}); guided: older vLLM's guided_regex/guided_json.")
    format_retries: int = Field(2, ge=0, description="Generate mode: re-ask an unreadable "
                                "answer this often (new seed each time) before it is invalid.")
    # response cache and metering
    cache: bool = Field(True, description="Reuse stored LLM results (table llm_cache) for the "
                        "same backend, model, prompt, parameters and seed.")
    prices: PricesConfig | None = Field(None, description="Per million tokens; gives the "
                                        "metering table a cost column.")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not (self.base_url or self.base_urls):
            raise ValueError("base_url is required when kind is 'openai' (or base_urls)")
        return self

    @model_validator(mode="after")
    def _settings_of_this_kind(self) -> BackendConfig:
        # A setting only another kind reads is a mistake (a misspelled kind, a key left over
        # from another backend): say so at load instead of ignoring it. Changed from its
        # default, not merely present: a stored config holds every key.
        for name, kinds in BACKEND_KIND_SETTINGS.items():
            if self.kind not in kinds and getattr(self, name) != type(self).model_fields[
                    name].get_default(call_default_factory=True):
                raise ValueError(f"{name} is a setting of kind {' or '.join(kinds)}, not of "
                                 f"{self.kind!r}")
        return self


_HF_KINDS = ("hf", "hf-vision", "tiny", "tiny-vision")
_OPENAI = ("openai",)
#: Backend settings that only some kinds read (the rest apply to every kind).
BACKEND_KIND_SETTINGS: dict[str, tuple[str, ...]] = {
    "p_yes": ("constant",),
    "device": _HF_KINDS, "dtype": _HF_KINDS, "kv_cache_mb": _HF_KINDS,
    "quantize": ("hf", "tiny"),
    **dict.fromkeys(("base_url", "base_urls", "api_key_env", "max_concurrency", "prefill",
                     "score_api", "tokenizer", "timeout_s", "max_retries", "backoff_base_s",
                     "backoff_max_s", "guided", "guided_key"), _OPENAI),
}


class IPAgentConfig(_Strict):
    """The item-perception agent (agents/ip_agent.py): staged, text-only or multimodal."""

    enabled: bool = True
    items_per_step: int = Field(4, ge=0, description="New items profiled per step, most "
                                "popular first.")
    max_new_tokens: int = Field(64, gt=0, description="Budget of the profile (RRA) stage.")
    in_prompt: bool = Field(False, description="Show profiles to the US agent.")
    staged: bool = Field(True, description="Sufficiency check and perception (CMP) before the "
                         "profile; false asks for the profile in one prompt.")
    cmp_max_new_tokens: int = Field(96, gt=0, description="Budget of the perception stage.")
    vision: bool = Field(False, description="Send covers and key frames to the backend (a "
                         "vision-language model: openai backend or kind hf-vision).")
    clip_model: str | None = Field(None, description="CLIP for key-frame retrieval: a "
                                   "transformers or open_clip model name or folder. None thins "
                                   "the sampled frames uniformly, as the paper's code does.")
    clip_backend: Literal["transformers", "open_clip"] = "transformers"
    frames_dir: str | None = Field(None, description="Per-item frames: FRAMES_DIR/<item>/ (a "
                                   "folder of images) or FRAMES_DIR/<item>.mp4.")
    n_frames: int = Field(5, ge=1, description="Frames sampled per video before KFR.")
    top_k_frames: int = Field(3, ge=1, description="Key frames kept.")


class SocialConfig(_Strict):
    """The friendship graph over the population."""

    graph: Literal["none", "watts_strogatz", "barabasi_albert", "cowatch"] = Field(
        "watts_strogatz", description="cowatch: each user befriends the k users whose real "
        "watch histories overlap theirs most.")
    k: int = Field(4, ge=1)
    p: float = Field(0.1, ge=0, le=1)
    show_friends_likes: int = Field(0, ge=0, description="Friends' recent likes shown in the "
                                    "prompt (0 = off).")
    inject_friends_likes: int = Field(
        0, ge=0, description="Slate slots (from the end) given to items a friend liked in the "
        "same arm and the user has not seen; the prompt marks them 'a friend liked this'.")


class MetricsConfig(_Strict):
    """How the per-step A/B metrics read items (environments/metrics.py)."""

    embeddings: Literal["auto", "minilm", "category", "none"] = Field(
        "auto", description="Item vectors of intra-list diversity: minilm (title embeddings, "
        "cached), category (multi-hot categories), none; auto is category for the synthetic "
        "world and minilm otherwise.")
    entropy_window: int = Field(20, ge=1, description="Profile entropy reads the categories "
                                "of each user's last N consumed items (real, then simulated).")


class Scenario(_Strict):
    """A whole scenario file."""

    name: str
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    arms: list[ArmConfig] = Field(min_length=1)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    ip_agent: IPAgentConfig = Field(default_factory=IPAgentConfig)
    social: SocialConfig = Field(default_factory=SocialConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    response_model: Literal["llm", "truth", "learned"] = Field(
        "llm", description="Where score-mode p(like) comes from: llm (the backend); truth "
        "(the synthetic world's hidden like probability: a user model whose best arm is known "
        "by construction); learned (a logistic model fitted on the real train split over item "
        "vectors (metrics.embeddings) and popularity: fast, for big populations). The LLM "
        "still writes traces and item profiles.")
    policy: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
        description="A trained US-agent policy from the registry (runs/policies, or "
        "$VRAGENT_POLICIES). The US agents run it: hf loads its model folder, openai asks the "
        "server for a model served under this name. The IP agent keeps backend.model.")

    @model_validator(mode="after")
    def _truth_needs_synthetic(self) -> Scenario:
        if self.response_model == "truth" and self.dataset.kind != "synthetic":
            raise ValueError("response_model 'truth' needs dataset.kind 'synthetic' (only the "
                             "synthetic world knows its users' true like probabilities)")
        if self.response_model == "truth" and self.backend.decision_mode != "score":
            raise ValueError("response_model 'truth' needs backend.decision_mode 'score'")
        return self

    @model_validator(mode="after")
    def _unique_arms(self) -> Scenario:
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names must be unique, repeated: {dupes}")
        return self


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a parsed YAML mapping.

    Raises:
        ScenarioError: one line naming the source and the first bad key.
    """
    if not isinstance(data, dict):
        got = "nothing (an empty file)" if data is None else type(data).__name__
        raise ScenarioError(f"{source}: expected a mapping at the top level, got {got}")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {validation_line(exc)}") from None


def resolve_scenario_path(name_or_path: str) -> Path:
    """A path as given, or a bundled scenario name (``quickstart``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SCENARIO_DIR / f"{name_or_path}.yaml"


def load_scenario(name_or_path: str,
                  overrides: Sequence[str] = ()) -> tuple[Scenario, str, Path]:
    """Read, parse and validate a scenario, with ``key.path=value`` overrides applied.

    Returns:
        The scenario, its YAML text (rewritten with the overrides, if any) and its path.

    Raises:
        ScenarioError: missing file, bad YAML, a bad override, or invalid content; one line.
    """
    path = resolve_scenario_path(name_or_path)
    if path.parent == SCENARIO_DIR and path.stem == name_or_path and not path.exists():
        raise ScenarioError(unknown_scenario(name_or_path))
    text = read_scenario_text(path)
    try:
        data = safe_yaml(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}:{_yaml_problem(exc)}") from None
    if overrides:
        if not isinstance(data, dict):  # an empty file: nothing to override
            parse_scenario(data, str(path))
        data = apply_overrides(data, overrides, str(path))
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return parse_scenario(data, f"{path} (with overrides)"), text, path
    return parse_scenario(data, str(path)), text, path


def read_scenario_text(path: Path) -> str:
    """A scenario file's text, read with a size cap.

    Raises:
        ScenarioError: unreadable, larger than :data:`MAX_SCENARIO_BYTES`, or not UTF-8.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario ({exc.strerror or exc})") from None
    if len(raw) > MAX_SCENARIO_BYTES:
        raise ScenarioError(f"{path}: scenario larger than {MAX_SCENARIO_BYTES // 1024} KiB; "
                            "not read further")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ScenarioError(f"{path}: line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x})"
                            ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`` line N invalid YAML: problem`` in one line (no source excerpt, no caret)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or exc
    return f"{where} invalid YAML: {' '.join(str(problem).split())}"


def apply_overrides(data: dict[str, Any], sets: Sequence[str], source: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a scenario mapping.

    A number in the path indexes a list: ``arms.1.params.epochs=2``.

    Raises:
        ScenarioError: an override is not ``key=value``, its value is not YAML (or uses a tag
            or an alias), or it walks into a non-mapping.
    """
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping at the top level, got "
                            f"{type(data).__name__}")
    out = copy.deepcopy(data)
    for item in sets:
        if "=" not in item:
            raise ScenarioError(f"{source}: override {item!r} is not key.path=value")
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ScenarioError(f"{source}: override {item!r} has no key")
        node: Any = out
        for k in keys[:-1]:
            if isinstance(node, list):
                node = node[_index(node, k, path, source)]
            else:
                node = node.setdefault(k, {})
            if not isinstance(node, dict | list):
                raise ScenarioError(f"{source}: override {path}: {k} is not a section")
        try:
            value = safe_yaml(raw)
        except yaml.YAMLError as exc:
            raise ScenarioError(f"{source}: override {path}:{_yaml_problem(exc)}") from None
        if isinstance(node, list):
            node[_index(node, keys[-1], path, source)] = value
        else:
            node[keys[-1]] = value
    return out


def _index(node: list, key: str, path: str, source: str) -> int:
    """A list position in an override path (``arms.1.params.epochs``)."""
    if not key.isdigit() or int(key) >= len(node):
        raise ScenarioError(f"{source}: override {path}: {key!r} is not an index below "
                            f"{len(node)}")
    return int(key)


def list_scenarios() -> list[Path]:
    """Bundled scenario files."""
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def unknown_scenario(name: str) -> str:
    """The one-line error for a name that is neither a bundled scenario nor a file."""
    import difflib

    close = difflib.get_close_matches(name, [p.stem for p in list_scenarios()], n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (f"no scenario {name!r}: not a bundled scenario nor a file; {hint}"
            "`vragent scenarios` lists the bundled ones")
