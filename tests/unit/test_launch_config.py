"""The front door: launcher -> submitit parameters and sbatch flags, real local jobs, composed configs, the CLI."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import submitit
import yaml
from submitit.slurm.slurm import SlurmExecutor

from pretrain.tags import normalize_tag
from webly.cli import main
from webly.config import (
    ConfigError,
    LauncherConfig,
    WeblyConfig,
    check,
    compose,
    group_options,
    pretrain_config,
    run_name,
)
from webly.launch import executor_parameters, make_executor, submit, wait

FULL = LauncherConfig(name="slurm", partition="gpu", account="proj42", qos="high", constraint="a100", mem_gb=64,
                      gpus_per_node=4, time_min=90, nodes=2, tasks_per_node=4, cpus_per_task=10,
                      extra={"exclude": "node7", "mail-type": "END"})

# --------------------------------------------------------------------------------------------- launcher params


def test_executor_parameters_map_to_submitit_names() -> None:
    assert executor_parameters(FULL, "pretrain") == {
        "name": "pretrain",
        "timeout_min": 90,
        "nodes": 2,
        "tasks_per_node": 4,
        "cpus_per_task": 10,
        "gpus_per_node": 4,
        "mem_gb": 64,
        "slurm_partition": "gpu",
        "slurm_account": "proj42",
        "slurm_qos": "high",
        "slurm_constraint": "a100",
        "slurm_additional_parameters": {"exclude": "node7", "mail-type": "END"},
    }


def test_executor_parameters_leave_unset_fields_to_the_cluster() -> None:
    assert executor_parameters(LauncherConfig(name="slurm"), "j") == {
        "name": "j", "timeout_min": 60, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": 2, "gpus_per_node": 0}


def test_executor_parameters_copy_extra() -> None:
    launcher = LauncherConfig(extra={"exclude": "n1"})
    params = executor_parameters(launcher, "j")
    params["slurm_additional_parameters"]["exclude"] = "changed"
    assert launcher.extra == {"exclude": "n1"}


@pytest.fixture
def fake_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit refuses a Slurm executor where `srun` is missing: pretend it is there (nothing is submitted)."""
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))


def test_sbatch_file_carries_the_launcher_settings(tmp_path: Path, fake_slurm: None) -> None:
    executor = make_executor(FULL, tmp_path / "jobs", "pretrain")
    assert executor.cluster == "slurm"
    text = executor._executor._make_submission_file_text("python -m something", "uid")
    lines = set(text.splitlines())
    for flag in ["--partition=gpu", "--account=proj42", "--qos=high", "--constraint=a100", "--gpus-per-node=4",
                 "--mem=64GB", "--time=90", "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=10",
                 "--job-name=pretrain", "--exclude=node7", "--mail-type=END"]:
        assert f"#SBATCH {flag}" in lines, flag
    assert f"#SBATCH --output={tmp_path / 'jobs'}/%j_0_log.out" in lines
    assert text.rstrip().endswith("python -m something")


def test_sbatch_file_omits_unset_flags(tmp_path: Path, fake_slurm: None) -> None:
    executor = make_executor(LauncherConfig(name="slurm"), tmp_path, "j")
    text = executor._executor._make_submission_file_text("cmd", "uid")
    for flag in ("--partition", "--account", "--qos", "--constraint", "--mem=", "--exclude"):
        assert f"#SBATCH {flag}" not in text, flag
    assert "#SBATCH --time=60" in text.splitlines()


def test_local_executor_drops_slurm_only_settings(tmp_path: Path) -> None:
    executor = make_executor(dataclasses.replace(FULL, name="local", nodes=1), tmp_path, "j")
    assert executor.cluster == "local"
    params = executor._executor.parameters
    assert params["timeout_min"] == 90
    assert params["tasks_per_node"] == 4
    assert not any(k in params for k in ("partition", "account", "qos", "mem", "mem_gb", "additional_parameters"))


def test_a_local_job_runs_and_returns_its_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = submit(LauncherConfig(name="local", cpus_per_task=1), tmp_path / "jobs", "t", normalize_tag, "#Café!")
    assert isinstance(job, submitit.local.local.LocalJob)
    assert wait([job], poll_s=0.1) == ["cafe"]
    assert job.paths.folder == tmp_path / "jobs"
    assert job.paths.result_pickle.exists()


def test_a_failing_local_job_raises_on_wait(tmp_path: Path) -> None:
    job = submit(LauncherConfig(name="local", cpus_per_task=1), tmp_path, "bad", normalize_tag, 17)
    with pytest.raises(submitit.core.utils.FailedJobError, match="TypeError"):
        wait([job], stream=False, poll_s=0.1)


def test_a_debug_job_runs_in_this_process(tmp_path: Path) -> None:
    job = submit(LauncherConfig(name="debug"), tmp_path, "d", normalize_tag, "ＳＵＮ-Set!")
    assert isinstance(job, submitit.DebugJob)
    assert wait([job]) == ["sun set"]


# ------------------------------------------------------------------------------------------------------ config


def test_compose_defaults_are_the_tiny_profile() -> None:
    cfg = compose()
    assert isinstance(cfg, WeblyConfig)
    assert (cfg.profile, cfg.model.name, cfg.model.depth, cfg.model.width) == ("tiny", "tiny", 10, 16)
    assert (cfg.launcher.name, cfg.head.name, cfg.optim.name) == ("local", "sigmoid", "sgd")
    assert (cfg.train.steps, cfg.train.keep_last, cfg.data.root) == (300, 2, "data/synthweb")  # profile wins


def test_compose_honours_overrides() -> None:
    cfg = compose(["model=resnet50", "optim=adamw", "optim.lr=0.2", "head=softmax", "data.subset=2",
                   "+launcher.extra.exclude=node7", "train.steps=12"])
    assert (cfg.model.depth, cfg.model.width) == (50, 64)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 0.2, 0.05)
    assert (cfg.head.name, cfg.data.subset, cfg.train.steps) == ("softmax", 2, 12)
    assert cfg.launcher.extra == {"exclude": "node7"}


def test_profile_paper_picks_resnet50_on_slurm() -> None:
    cfg = compose(["profile=paper"])
    assert (cfg.profile, cfg.model.name, cfg.model.depth) == ("paper", "resnet50", 50)
    assert cfg.launcher.name == "slurm"
    assert (cfg.launcher.gpus_per_node, cfg.launcher.tasks_per_node, cfg.launcher.time_min) == (8, 8, 4320)
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.optim.warmup_steps) == (224, 256, 2500)


def test_command_line_group_choice_beats_the_profile() -> None:
    cfg = compose(["profile=paper", "model=resnet101", "train.steps=7"])
    assert (cfg.model.name, cfg.model.depth) == ("resnet101", 101)
    assert cfg.launcher.name == "slurm"
    assert cfg.train.steps == 7


def _with(cfg: WeblyConfig, section: str, **changes) -> WeblyConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("head", {"name": "cosine"}, "head.name='cosine': choose one of embedding, sampled_softmax, sigmoid, softmax"),
        ("head", {"loss": "triplet"}, "head.loss='triplet': choose one of negative_sampling, hinge"),
        ("search", {"instance_weight": 1.5}, "search.instance_weight=1.5: must be in [0, 1]"),
        ("model", {"depth": 11}, "model.depth=11: choose one of 10, 18, 34, 50, 101, 152, 200"),
        ("optim", {"name": "lamb"}, "optim.name='lamb': choose one of sgd, adamw"),
        ("launcher", {"name": "k8s"}, "launcher.name='k8s': choose one of local, slurm, debug"),
        ("train", {"steps": 0}, "train.steps=0: must be positive"),
        ("train", {"steps": -5}, "train.steps=-5: must be positive"),
        ("train", {"batch_size": 0}, "train.batch_size=0: must be positive"),
        ("train", {"steps_per_epoch": 0}, "train.steps_per_epoch=0: must be positive"),
        ("train", {"checkpoint_every": 0}, "train.checkpoint_every=0: must be positive"),
        ("data", {"image_size": 0}, "data.image_size=0: must be positive"),
        ("data", {"subset": -1}, "data.subset=-1: 1-based subset index, or 0 for all shards"),
        ("data", {"min_scale": 1.5}, "data.min_scale=1.5: must be in (0, 1]"),
        ("data", {"min_scale": 0.0}, "data.min_scale=0.0: must be in (0, 1]"),
    ],
)
def test_check_names_the_key(section: str, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check(_with(WeblyConfig(), section, **changes))
    assert str(info.value) == message


def test_check_accepts_the_defaults_and_edge_values() -> None:
    check(WeblyConfig())
    check(_with(WeblyConfig(), "data", min_scale=1.0, subset=3))


def test_check_rejects_a_zero_log_interval() -> None:
    with pytest.raises(ConfigError, match=r"^train\.log_every=0: must be positive$"):
        check(_with(WeblyConfig(), "train", log_every=0))


def test_shards_without_input_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["shards", "data=folder"]) == 2
    assert "data.shards.input is empty" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_compose_runs_check() -> None:
    with pytest.raises(ConfigError, match=r"^train\.steps=0: must be positive$"):
        compose(["train.steps=0"])


def test_run_name() -> None:
    cfg = WeblyConfig()
    assert run_name(cfg) == "synthweb-all-tiny-sigmoid-seed0"
    cfg = _with(_with(_with(cfg, "data", root="/x/y/mydata", subset=2), "head", name="softmax"), "train", seed=7)
    assert run_name(cfg) == "mydata-s2-tiny-softmax-seed7"
    assert run_name(dataclasses.replace(cfg, name="custom")) == "custom"


def test_pretrain_config_leaves_out_the_launcher() -> None:
    cfg = _with(WeblyConfig(), "launcher", name="slurm", partition="gpu")
    stage = pretrain_config(cfg)
    assert type(stage).__name__ == "PretrainConfig"
    assert not hasattr(stage, "launcher") and not hasattr(stage, "profile")
    assert stage.model == cfg.model and stage.train == cfg.train


# --------------------------------------------------------------------------------------------------------- CLI


def test_group_options() -> None:
    assert group_options() == {
        "data": ["folder", "synthweb"],
        "model": ["resnet101", "resnet152", "resnet18", "resnet200", "resnet34", "resnet50", "tiny", "tiny18"],
        "head": ["embedding", "sampled_softmax", "sigmoid", "softmax"],
        "optim": ["adamw", "sgd"],
        "launcher": ["debug", "local", "slurm"],
        "logging": ["default"],
        "profile": ["demo", "paper", "tiny"],
        "experiment": ["demo", "tiny"],
        "task": ["classification", "detection", "instance", "pose", "semantic"],
    }


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def _assert_lists_groups(out: str) -> None:
    assert "config groups (choose with group=option):" in out
    for group, options in group_options().items():
        assert f"  {group:<11} {', '.join(options)}" in out.splitlines(), group
    assert "add --cfg to print the composed config and stop." in out


def test_webly_help_lists_commands_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["--help"], capsys)
    assert out.startswith("usage: webly [-h] COMMAND ...")
    for command in ("synth", "shards", "pretrain", "transfer", "dedup", "experiment", "report", "demo"):
        assert f"    {command}" in out, command
    _assert_lists_groups(out)


def test_webly_pretrain_help_lists_options_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["pretrain", "--help"], capsys)
    assert out.startswith("usage: webly pretrain [-h] [--cfg] [-m] [OVERRIDE ...]")
    assert "pretrain a ResNet on the shards in data.root" in out
    assert re.search(r"--cfg +print the composed config and exit", out)
    assert re.search(r"-m, --multirun +sweep: key=a,b,c runs one job per combination", out)
    assert re.search(r"OVERRIDE +group=option or key=value", out)
    _assert_lists_groups(out)


def test_webly_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_webly_pretrain_cfg_prints_the_composed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--cfg", "model=resnet50", "optim.lr=0.25"]) == 0
    out = capsys.readouterr().out
    assert "  depth: 50\n" in out
    printed = yaml.safe_load(out)
    assert printed["model"] == {"name": "resnet50", "depth": 50, "width": 64}
    assert printed["optim"]["lr"] == 0.25
    assert printed["launcher"]["name"] == "local"
    assert printed["profile"] == "tiny"
    assert list(tmp_path.iterdir()) == []  # --cfg starts nothing
