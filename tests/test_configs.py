"""Configs check themselves and the command line is made from them: every field of
every stage config has a flag, errors name the field (the flag at the command line),
unknown keys are refused, and every command accepts --no-progress."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.main import app
from cli.options import flag_name
from hipi_offline.bc.config import BCConfig
from hipi_offline.collect import CollectConfig
from hipi_offline.configs import FieldError, field_docs, from_dict
from hipi_offline.errors import InputError
from hipi_offline.evaluate import EvalConfig
from hipi_offline.experiments import Fig7aConfig, Fig7bConfig
from hipi_offline.experiments.common import Control, TrainSettings
from hipi_offline.relabel import RelabelConfig
from hipi_offline.store import open_store
from hipi_offline.store.synthetic import SyntheticConfig

COMMANDS: dict[str, tuple[type, dict[str, str]]] = {
    "make-synthetic": (SyntheticConfig, {}),
    "collect": (CollectConfig, {}),
    "relabel": (RelabelConfig, {}),
    "train-bc": (BCConfig, {}),
    "evaluate": (EvalConfig, {"json_path": "--json"}),
}
"""Each stage's command, its config and the flags spelled otherwise than the field."""
REPO = Path(__file__).resolve().parents[1]
STAGE_CONFIGS = (SyntheticConfig, CollectConfig, RelabelConfig, BCConfig, EvalConfig)


def command_of(name: str) -> Any:
    """The click command ``name`` (made on demand: its config is imported now)."""
    return typer.main.get_command(app).get_command(None, name)  # type: ignore[attr-defined,arg-type]


def flags_of(command: str) -> set[str]:
    """Every option string of a command (``--x`` and ``--no-x`` of a switch)."""
    click_command = command_of(command)
    names: set[str] = set()
    for param in click_command.params:
        names.update(param.opts)
        names.update(getattr(param, "secondary_opts", []))
    return names


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(result: Any) -> str:
    """Exit code 2 and one ``error:`` line, which is returned."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------ the CLI from the configs
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_a_flag(command: str) -> None:
    cls, renamed = COMMANDS[command]
    have = flags_of(command)
    for f in fields(cls):
        assert renamed.get(f.name, flag_name(f.name)) in have, f"{command}: no flag for {f.name}"


@pytest.mark.parametrize(
    "command",
    typer.main.get_command(app).list_commands(None),  # type: ignore[attr-defined,arg-type]
)
def test_every_command_accepts_no_progress(command: str) -> None:
    assert {"--progress", "--no-progress"} <= flags_of(command)


@pytest.mark.slow
def test_inspect_does_not_import_torch() -> None:
    """A command's config (and torch, MuJoCo) is imported only when it is run."""
    code = (
        "import sys; from cli.main import main; sys.argv = ['hipi-offline', 'inspect', 'x.h5']\n"
        "try: main()\n"
        "except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "x.h5: no such store" in done.stderr


@pytest.mark.parametrize("cls", STAGE_CONFIGS)
def test_every_stage_config_field_has_a_docstring(cls: type) -> None:
    """The docstrings are the command line's help texts."""
    docs = field_docs(cls)
    assert [f.name for f in fields(cls) if not docs.get(f.name)] == []


def test_help_comes_from_the_field_docstring() -> None:
    helps = {param.name: param.help for param in command_of("train-bc").params}
    assert helps["lr"] == "Peak learning rate of AdamW."
    assert helps["body_frame_task"].endswith("(TaskFrame; the quadruped).")  # no reST markup
    assert "--max-memory-mb" in cli("train-bc", "--help").stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["train-bc", "x.h5", "--out", "run", "--labels", "a", "--batch-size", "0"],
            "error: --batch-size: must be a positive integer, got 0",
        ),
        (
            ["train-bc", "x.h5", "--out", "run", "--labels", "a", "--resume", "--overwrite"],
            "error: --resume: pass at most one of --resume and --overwrite",
        ),
        (
            ["train-bc", "x.h5", "--out", "run", "--task-agnostic", "--labels", "a"],
            "error: --task-agnostic: trains without tasks; drop --labels",
        ),
        (
            ["train-bc", "x.h5", "--out", "run", "--labels", "a", "--max-memory-mb", "-1"],
            "error: --max-memory-mb: must be a non-negative finite number, got -1.0",
        ),
        (["evaluate", "run", "--group-size", "0"], "error: --group-size: must be a positive"),
        (["evaluate", "run", "--render-size", "0", "5"], "error: --render-size: must be an"),
        (["collect", "cheetah", "--out", "x.h5", "--compression", "zip"], "error: --compression:"),
        (["collect", "cheetah", "--out", "x.h5", "--commit-seconds", "-1"], "error: --commit-"),
        (["relabel", "x.h5", "--tasks", "t", "--max-matrix-mb", "0"], "error: --max-matrix-mb:"),
        (["make-synthetic", "x.h5", "--batch-episodes", "0"], "error: --batch-episodes:"),
        (["fig7a", "--preset", "tiny", "--train-steps", "0"], "error: --train-steps: must be"),
        (["fig7a", "--preset", "tiny", "--seeds", "1", "--seeds", "1"], "error: --seeds: "),
        (["fig7b", "--preset", "tiny", "--eval-episodes", "0"], "error: --eval-episodes: "),
        (["fig7b", "--preset", "tiny", "--workers", "0"], "error: --workers: must be"),
        (["fig7a", "--preset", "tiny", "--env", "cheetah.episodes=0"], "error: envs.cheetah.ep"),
        (["fig7a", "--preset", "tiny", "--env", "walker.steps=3"], "error: --env: expected ENV"),
        (["fig7a", "--preset", "tiny", "--env", "desk.steps=x"], "error: --env: steps cannot"),
        (["fig7a", "--preset", "tiny", "--env", "desk.train.lr=-1"], "error: envs.desk.train.lr"),
    ],
)
def test_field_errors_name_the_flag(
    args: list[str], line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert one_error(cli(*args)).startswith(line)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_new_flags_reach_the_config(tmp_path: Path) -> None:
    """Fields that had no flag before: --chunk-rows (make-synthetic), --max-memory-mb
    (train-bc)."""
    store = tmp_path / "s.h5"
    assert cli("make-synthetic", store, "--episodes", 3, "--steps", 8, "--chunk-rows", 64,
               "--no-progress").exit_code == 0  # fmt: skip
    with open_store(store) as s:
        assert s.attrs["chunk_rows"] == 64
    run = tmp_path / "run"
    result = cli("train-bc", store, "--task-agnostic", "--out", run, "--steps", 2,
                 "--warmup-steps", 0, "--batch-size", 4, "--hidden", "4", "--threads", 1,
                 "--max-memory-mb", 12.5, "--no-progress")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["config"]["max_memory_mb"] == 12.5


def test_env_settings_reach_each_environment_alone() -> None:
    """``--env ENV.FIELD=VALUE`` (fig7a) changes one environment's setup, nothing else."""
    tiny = Fig7aConfig.tiny()
    changed = tiny.with_env_settings(
        ["cheetah.episodes=7", "desk.eval_steps=none", "cheetah.train.hidden=8,8"]
    )
    before, after = {e.env: e for e in tiny.envs}, {e.env: e for e in changed.envs}
    assert after["cheetah"].episodes == 7 and after["desk"].eval_steps is None
    assert after["cheetah"].eval_steps == before["cheetah"].eval_steps
    assert after["desk"].episodes == before["desk"].episodes
    assert changed.train == tiny.train and changed.seeds == tiny.seeds
    assert after["cheetah"].train == replace(tiny.train, hidden=(8, 8))
    assert after["desk"].train == before["desk"].train


# ------------------------------------------------------------------ the configs themselves
@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: BCConfig(out="r", labels="a", steps=0), "steps"),
        (lambda: BCConfig(out="r", labels="a", hidden=()), "hidden"),
        (lambda: BCConfig(out="r", labels="a", head="mixture"), "head"),
        (lambda: BCConfig(out="r", labels="a", lr=float("inf")), "lr"),
        (lambda: BCConfig(out="r", labels="a", threads=True), "threads"),
        (lambda: BCConfig(out="r"), "labels"),
        (lambda: CollectConfig(episodes=0), "episodes"),
        (lambda: CollectConfig(workers=1025), "workers"),
        (lambda: CollectConfig(seed=-1), "seed"),
        (lambda: CollectConfig(expert="mppi"), "expert"),
        (lambda: RelabelConfig(tasks="t", method="magic"), "method"),
        (lambda: RelabelConfig(tasks="t", top_k=0), "top_k"),
        (lambda: RelabelConfig(tasks="t", name="../x"), "name"),
        (lambda: RelabelConfig(tasks="t", temperature=0.0), "temperature"),
        (lambda: EvalConfig(group_size=0), "group_size"),
        (lambda: EvalConfig(render_episodes=(-1,)), "render_episodes"),
        (lambda: SyntheticConfig(compression="zip"), "compression"),
        (lambda: SyntheticConfig(chunk_rows=0), "chunk_rows"),
        (lambda: Control(workers=0).check(), "workers"),
        (lambda: TrainSettings(lr=-1.0).check(), "train.lr"),
    ],
)
def test_a_bad_value_is_a_field_error_naming_the_field(make: Any, field: str) -> None:
    with pytest.raises(FieldError, match=rf"^{field}: ") as info:
        make()
    assert info.value.field == field


def test_from_json_round_trips_and_refuses_unknown_keys() -> None:
    config = BCConfig(out="run", labels="hipi", hidden=(8, 4))
    data = json.loads(json.dumps(config.to_json()))
    assert BCConfig.from_json(data) == config
    with pytest.raises(InputError, match=r"^config: unknown keys colour, wheels \(known: out,"):
        BCConfig.from_json({**data, "wheels": 4, "colour": "red"})
    with pytest.raises(FieldError, match="^batch_size: "):
        BCConfig.from_json({**data, "batch_size": -1})
    with pytest.raises(InputError, match="^config: missing out"):
        BCConfig.from_json({"labels": "hipi"})
    with pytest.raises(InputError, match="^config: expected a mapping"):
        BCConfig.from_json([1, 2])  # type: ignore[arg-type]


def test_from_dict_loads_nested_configs() -> None:
    """Lists become tuples and nested settings become their dataclasses, checked."""
    tiny = Fig7bConfig.tiny()
    data = json.loads(json.dumps(tiny.settings()))
    assert from_dict(Fig7bConfig, data) == tiny.with_control(workers=2, threads=1, progress=True)
    data["train"]["steps"] = 0
    with pytest.raises(FieldError, match=r"^train\.steps: "):
        from_dict(Fig7bConfig, data)


def test_renamed_spells_every_mentioned_field() -> None:
    err = FieldError("resume", "pass at most one of resume and overwrite", ["resume", "overwrite"])
    flag = err.renamed(lambda name: "--" + name)
    assert str(flag) == "--resume: pass at most one of --resume and --overwrite"
    nested = FieldError("steps", "must be a positive integer, got 0").renamed("train.{}".format)
    assert (nested.field, str(nested)) == (
        "train.steps",
        "train.steps: must be a positive integer, got 0",
    )


def test_experiment_presets_are_valid_and_bad_ones_fail_when_made() -> None:
    for cls in (Fig7aConfig, Fig7bConfig):
        for preset in ("tiny", "reduced", "full"):
            cls.preset(preset)
    with pytest.raises(FieldError, match="^eval_seed: "):
        Fig7aConfig(envs=Fig7aConfig.tiny().envs, eval_seed=-1)
