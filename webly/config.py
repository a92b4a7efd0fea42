"""Configuration: YAML groups under `configs/` composed by Hydra over typed dataclasses, plus command-line overrides.

`compose(["model=resnet50", "optim.lr=0.2"])` returns a typed `WeblyConfig`. A misspelt key, a value of the
wrong type or an unknown group option raises `ConfigError` naming it, before any work is done.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config import PretrainConfig
from transfer.config import MODES, TASKS, DedupConfig, SearchConfig, SynthBenchConfig, TransferConfig

GROUPS = ("data", "model", "head", "optim", "launcher", "logging", "profile", "experiment", "task")
LAUNCHERS = ("local", "slurm", "debug")
STAGES = ("data", "pretrain", "dedup", "transfer", "report")


@dataclass
class LauncherConfig:
    """Where jobs run: `local` (submitit's local executor), `slurm`, or `debug` (in this process)."""

    name: str = "local"
    partition: str = ""
    time_min: int = 60
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 0  # 0: the cluster's default
    account: str = ""
    qos: str = ""
    constraint: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch flag, e.g. {exclude: node7}
    folder: str = ""  # submitit's job folder (scripts, pickles, logs); empty: <work_dir>/jobs


@dataclass
class GridConfig:
    """The cells of a scaling study: every combination is pretrained, then transferred to every task."""

    subsets: list[int] = field(default_factory=lambda: [1, 2, 3])  # nested data sizes (1-based subset indices)
    models: list[str] = field(default_factory=lambda: ["tiny", "tiny18"])  # options of the model group
    heads: list[str] = field(default_factory=lambda: ["sigmoid"])  # options of the head group
    seeds: list[int] = field(default_factory=lambda: [0])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    modes: list[str] = field(default_factory=lambda: ["frozen"])
    baseline: bool = True  # also transfer randomly initialised trunks
    baseline_models: list[str] = field(default_factory=list)  # the models of those trunks; empty: every model


@dataclass
class TaskSettings:
    """Per-task overrides of the experiment's transfer settings; 0 keeps the shared value."""

    steps: int = 0
    lr: float = 0.0
    batch_size: int = 0
    image_size: int = 0
    repeats: int = 0


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    grid: GridConfig = field(default_factory=GridConfig)
    bench: SynthBenchConfig = field(default_factory=SynthBenchConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    tasks: dict[str, TaskSettings] = field(default_factory=dict)
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # run only these (e.g. [data, pretrain])
    max_parallel: int = 2  # jobs of a stage running at once (local jobs; on Slurm the array's task limit)
    wait: bool = True  # Slurm: follow the jobs to the end; false: submit every stage and return
    group_transfers: bool = False  # one job per trunk (all its tasks) instead of one per transfer run
    threads_per_job: int = 1


@dataclass
class WeblyConfig(PretrainConfig):
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)  # `webly transfer`: one task, one trunk
    search: SearchConfig = field(default_factory=SearchConfig)  # `webly search`: an embedding-head run's index
    profile: str = "tiny"  # set by the profile group: tiny | demo | paper
    work_dir: str = "runs"  # every stage's run directory goes below this
    name: str = ""  # run name; empty: derived from data, subset, model, head and seed


class ConfigError(ValueError):
    """A config that cannot run: the message names the key or the option."""


def config_dir() -> Path:
    """The `configs/` folder: shipped inside the package as `webly.configs`."""
    return Path(str(resources.files("webly.configs")))


def _register_schema() -> None:
    ConfigStore.instance().store(name="webly_schema", node=WeblyConfig)


def group_options() -> dict[str, list[str]]:
    """Every config group and the options it offers, read from the YAML files."""
    root = config_dir()
    return {g: sorted(p.stem for p in (root / g).glob("*.yaml")) for g in GROUPS if (root / g).is_dir()}


def compose(overrides: list[str] | None = None, config_name: str = "config") -> WeblyConfig:
    """The typed config after applying `overrides` (Hydra syntax: key=value, group=option)."""
    _register_schema()
    overrides = list(overrides or [])
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
            raw = hydra_compose(config_name=config_name, overrides=overrides)
        cfg = OmegaConf.to_object(raw)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None
    assert isinstance(cfg, WeblyConfig)
    check(cfg)
    return cfg


_NOISE = (
    "To append to your config",
    "reference_type=",
    "object_type=",
    "$VALUE",
    "invalid literal",
    "Config search path",
    "provider=",
)


def _explain(err: Exception) -> str:
    """Hydra's message and its causes, without the internals, plus a suggestion for a misspelt key."""
    lines: list[str] = []
    cause: BaseException | None = err
    while cause is not None:
        for line in str(cause).strip().splitlines():
            if line.strip() and not any(n in line for n in _NOISE) and line not in lines:
                lines.append(line)
        cause = cause.__cause__ or cause.__context__
    full_key = next((ln.split("full_key:")[1].strip() for ln in lines if "full_key:" in ln), "")
    if full_key and any("not in" in ln for ln in lines):
        hint = _suggest(full_key)
        if hint:
            lines.append(f"did you mean '{hint}'?")
    return "\n".join(line.rstrip() for line in lines)


def _suggest(full_key: str) -> str:
    """The closest existing key to a misspelt dotted key, found by walking the schema."""
    node: Any = WeblyConfig
    *parents, leaf = full_key.split(".")
    for part in parents:
        types = {f.name: f.default_factory for f in dataclasses.fields(node)}  # type: ignore[arg-type]
        factory = types.get(part)
        if factory is None or factory is dataclasses.MISSING:
            return ""
        node = type(factory())
        if not dataclasses.is_dataclass(node):
            return ""
    match = difflib.get_close_matches(leaf, [f.name for f in dataclasses.fields(node)], n=1)
    return ".".join([*parents, match[0]]) if match else ""


def check(cfg: WeblyConfig) -> None:
    """Values that type-check but cannot run."""
    # the allowed values live beside the code that uses them, which loads torch: imported here, not at the
    # top, so that a job process unpickling a config does not pay for it
    from pretrain.distributed import BACKENDS
    from pretrain.embedding_head import LOSSES
    from pretrain.heads import HEADS
    from pretrain.models import ARCHITECTURES
    from pretrain.runlog import WANDB_MODES
    from pretrain.sampling import PROPOSALS
    from pretrain.step import PRECISIONS
    from pretrain.zeroshot import POOLS

    choices: list[tuple[str, Any, Any]] = [
        ("head.name", cfg.head.name, sorted(HEADS)),
        ("model.depth", cfg.model.depth, sorted(ARCHITECTURES)),
        ("optim.name", cfg.optim.name, ["sgd", "adamw"]),
        ("logging.wandb.mode", cfg.logging.wandb.mode, list(WANDB_MODES)),
        ("launcher.name", cfg.launcher.name, list(LAUNCHERS)),
        ("head.proposal", cfg.head.proposal, list(PROPOSALS)),
        ("head.loss", cfg.head.loss, list(LOSSES)),
        ("head.zeroshot_pool", cfg.head.zeroshot_pool, list(POOLS)),
        ("train.precision", cfg.train.precision, list(PRECISIONS)),
        ("train.backend", cfg.train.backend, list(BACKENDS)),
    ]
    for key, value, allowed in choices:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(map(str, allowed))}")
    positive = {
        "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size,
        "train.steps_per_epoch": cfg.train.steps_per_epoch,
        "train.checkpoint_every": cfg.train.checkpoint_every,
        "train.log_every": cfg.train.log_every,
        "train.accumulate": cfg.train.accumulate,
        "head.num_sampled": cfg.head.num_sampled,
        "head.eval_chunk": cfg.head.eval_chunk,
        "head.vectors_dim": cfg.head.vectors_dim,
        "data.image_size": cfg.data.image_size,
        "data.shards.samples_per_shard": cfg.data.shards.samples_per_shard,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}={value}: must be positive")
    grid = cfg.experiment.grid
    for key, values, allowed in (
        ("experiment.grid.tasks", grid.tasks, TASKS),
        ("experiment.grid.modes", grid.modes, MODES),
        ("experiment.tasks", list(cfg.experiment.tasks), TASKS),
        ("experiment.stages", cfg.experiment.stages, STAGES),
    ):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            raise ConfigError(f"{key}: unknown {unknown}; choose from {', '.join(allowed)}")
    options = group_options()
    for key, values, group in (
        ("experiment.grid.models", grid.models, "model"),
        ("experiment.grid.heads", grid.heads, "head"),
    ):
        unknown = [v for v in values if v not in options[group]]
        if unknown:
            raise ConfigError(f"{key}: unknown {unknown}; options of the {group} group: {', '.join(options[group])}")
    shards = cfg.data.shards
    for key, value, allowed in (("data.shards.source", shards.source, ("folder", "yfcc", "img2dataset")),
                                ("data.shards.vocab.oov", shards.vocab.oov, ("drop", "bucket"))):
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(allowed)}")
    if shards.source == "yfcc" and shards.input and not shards.photos:
        raise ConfigError("data.shards.photos is empty: data.shards.source=yfcc needs the folder of photos")
    if shards.vocab.max_tracked < 0 or shards.vocab.max_tracked == 1:
        raise ConfigError(f"data.shards.vocab.max_tracked={shards.vocab.max_tracked}: 0 (exact) or at least 2")
    if cfg.data.subset < 0:
        raise ConfigError(f"data.subset={cfg.data.subset}: 1-based subset index, or 0 for all shards")
    if not 0 <= cfg.data.resample_alpha <= 1:
        raise ConfigError(f"data.resample_alpha={cfg.data.resample_alpha}: must be in [0, 1] (1 natural, 0 uniform)")
    if cfg.head.vectors_epochs < 0 or cfg.head.zeroshot_count < 0:
        raise ConfigError("head.vectors_epochs and head.zeroshot_count must be >= 0 (0: automatic / none)")
    if not 0 <= cfg.search.instance_weight <= 1:
        raise ConfigError(f"search.instance_weight={cfg.search.instance_weight}: must be in [0, 1]")
    if not 0 < cfg.data.min_scale <= 1:
        raise ConfigError(f"data.min_scale={cfg.data.min_scale}: must be in (0, 1]")


def pretrain_config(cfg: WeblyConfig) -> PretrainConfig:
    """The part of the config the pretraining stage sees (the launcher does not change its results)."""
    return PretrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PretrainConfig)})


def load_option(group: str, option: str, schema: type) -> Any:
    """One option of a config group (e.g. model/tiny18.yaml) as its typed dataclass."""
    merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(config_dir() / group / f"{option}.yaml"))
    return OmegaConf.to_object(merged)


def run_name(cfg: WeblyConfig) -> str:
    if cfg.name:
        return cfg.name
    subset = f"s{cfg.data.subset}" if cfg.data.subset else "all"
    return f"{Path(cfg.data.root).name}-{subset}-{cfg.model.name}-{cfg.head.name}-seed{cfg.train.seed}"


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
