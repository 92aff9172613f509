"""The flags of `dream image|prompt` come from the configs' fields: help and library default read from the
config, the command line's own defaults from one table, errors through `Config.build` named after the flag;
one default-model table; every subcommand builds its own parser."""

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from dreamy.cli import dashboard, direction, export, image, main, prompt, sae_train, sites
from dreamy.cli.arguments import UsageError
from dreamy.cli.flags import (CLI_DEFAULTS, DEFAULT_MODELS, add_config_flags, config_from_flags, flag_fields,
                              library_default, shown)
from dreamy.cli.parser import build_parser
from dreamy.language import EPOConfig, GCGConfig
from dreamy.vision import DreamConfig

CLI = Path(__file__).resolve().parents[2] / "dreamy" / "cli"


def subcommand(name: str) -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices[name]


def actions(name: str) -> dict[str, argparse.Action]:
    return {a.option_strings[0]: a for a in subcommand(name)._actions if a.option_strings}


@pytest.mark.parametrize("command, fields, configs", [("image", image.FIELDS, (DreamConfig,)),
                                                      ("prompt", prompt.FIELDS, (EPOConfig, GCGConfig))])
def test_every_config_flag_states_each_library_default_and_the_command_lines_own(command, fields, configs):
    flags = actions(command)
    for flag, field in flag_fields(fields).items():
        action = flags[f"--{flag}"]
        library = [library_default(c, field) for c in configs if field in c.field_names()]
        for value in library:
            if value is not None:
                assert shown(value) in action.help, (flag, action.help)
        if flag in CLI_DEFAULTS[command]:
            assert action.default == CLI_DEFAULTS[command][flag] and "the library's" in action.help, flag
        elif len(library) == len(configs) and len(set(library)) == 1:
            assert action.default == library[0], flag  # the library's default itself, read from the config
        else:
            assert action.default is None and "the library's" in action.help, flag  # each config keeps its own


def test_a_changed_library_default_changes_the_flag_and_its_help(monkeypatch):
    lr = next(f for f in dataclasses.fields(DreamConfig) if f.name == "lr")
    monkeypatch.setattr(lr, "default", 0.07)
    assert actions("image")["--lr"].default == 0.07 and "(default 0.07)" in actions("image")["--lr"].help
    tokens = next(f for f in dataclasses.fields(GCGConfig) if f.name == "n_tokens")
    monkeypatch.setattr(tokens, "default", 77)
    assert "the library's EPOConfig: 12, GCGConfig: 77" in actions("prompt")["--tokens"].help


def test_the_command_lines_defaults_build_the_configs_they_did():
    args = ["--out", "x", "--target", "logits:3"]
    parse = build_parser().parse_args
    assert image.config_of(parse(["image", *args])) == DreamConfig(steps=128)
    assert prompt.config_of(parse(["prompt", *args])) == EPOConfig(iters=50, n_tokens=10, population=6, children=32)
    assert prompt.config_of(parse(["prompt", *args, "--method", "gcg"])) == GCGConfig(iters=50, n_tokens=10, children=32)
    assert prompt.config_of(parse(["prompt", *args, "--maxima", "fortunes"])).init == "mixed"
    config = image.config_of(parse(["image", *args, "--size", "64", "--tv", "0.5", "--per-target", "2", "--seed", "3"]))
    assert (config.image_size, config.regularizers, config.n_per_target, config.seed) == ((64, 64), {"tv": 0.5}, 2, 3)


def test_a_value_the_config_refuses_is_one_line_naming_the_flag(capsys, tmp_path):
    parse = build_parser().parse_args
    with pytest.raises(UsageError, match=r"^--activation-slots: EPOConfig.activation_slots \(3\) must leave"):
        prompt.config_of(parse(["prompt", "--out", "x", "--population", "3", "--activation-slots", "3"]))
    assert main(["prompt", "--model", "tiny:lm", "--target", "logits:1", "--activation-slots", "-1",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dream: error: --activation-slots: EPOConfig.activation_slots must be >= 0, got -1"
    assert not (tmp_path / "o").exists()


def test_config_flags_on_a_toy_config():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, (EPOConfig, GCGConfig), ["tokens=n_tokens", "fluency_weight_range", "prefix"],
                     cli_defaults={"tokens": 5})
    args = parser.parse_args(["--fluency-weight-range", "1,2"])
    assert (args.tokens, args.fluency_weight_range, args.prefix) == (5, (1.0, 2.0), "")
    fields = ["tokens=n_tokens", "fluency_weight_range", "prefix"]
    assert config_from_flags(args, GCGConfig, fields).n_tokens == 5  # GCG has no weight range: not its flag
    assert config_from_flags(args, EPOConfig, fields).fluency_weight_range == (1.0, 2.0)
    with pytest.raises(ValueError, match="has a field 'nope'"):
        add_config_flags(argparse.ArgumentParser(), EPOConfig, ["nope"])


def test_one_default_model_table():
    assert direction.DEFAULT_MODELS is DEFAULT_MODELS and sae_train.DEFAULT_MODEL == DEFAULT_MODELS["text"]
    assert actions("image")["--model"].default == DEFAULT_MODELS["image"]
    assert actions("prompt")["--model"].default == DEFAULT_MODELS["text"]
    assert build_parser().parse_args(["sites"]).model == DEFAULT_MODELS["image"]
    for path in CLI.glob("*.py"):  # no other module-level constant names a model
        constants = [node for statement in ast.parse(path.read_text()).body
                     if isinstance(statement, (ast.Assign, ast.AnnAssign)) for node in ast.walk(statement)
                     if isinstance(node, ast.Constant) and "bundled:" in str(node.value)]
        assert not constants or path.name == "flags.py", path.name


def test_every_subcommand_builds_its_own_parser():
    commands = {"sites": sites, "image": image, "prompt": prompt, "sae-train": sae_train, "export": export,
                "direction": direction, "dashboard": dashboard}
    for name, module in commands.items():
        parser = module.add_parser(argparse.ArgumentParser(prog="dream").add_subparsers())
        assert parser.prog.endswith(name)
    assert list(build_parser()._subparsers._group_actions[0].choices) == list(commands)
    calls = [node.func.attr for node in ast.walk(ast.parse((CLI / "parser.py").read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]
    assert "add_argument" not in calls  # the parser module only assembles


def test_what_the_run_reads_is_on_both_commands_parsers():
    parse = build_parser().parse_args
    for command in ("image", "prompt"):
        args = parse([command, "--out", "x"])
        assert {"describe", "labels", "steer", "judge", "maxima", "seed"} <= set(vars(args)), command


def test_sae_train_flags_default_to_the_sae_config(monkeypatch):
    from dreamy.sae.config import SAETrainConfig

    flags = actions("sae-train")
    for flag, field in flag_fields(sae_train.CONFIG_FLAGS).items():
        assert flags[f"--{flag}"].default == library_default(SAETrainConfig, field), flag
    features = next(f for f in dataclasses.fields(SAETrainConfig) if f.name == "features")
    monkeypatch.setattr(features, "default", 1024)
    assert actions("sae-train")["--features"].default == 1024 and "(default 1024)" in actions("sae-train")["--features"].help
