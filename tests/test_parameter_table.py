"""The generation parameters are listed once, in generation_params.PARAMETERS: the CLI, the
request formats and GenerationParams all cover the table, and no other module lists them."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import typer.main

from gpt2cli import generation_params
from gpt2cli.cli import app, cli_name
from gpt2cli.commands.generate import parameter_values
from gpt2cli.decoding import GenerationParams
from gpt2cli.errors import InputError
from gpt2cli.generation_params import PARAMETERS, TRANSFORMERS_DEFAULTS, Parameter
from gpt2cli.request_formats import PARAMETER_TYPES, parse_request

PACKAGE = Path(generation_params.__file__).parent
NAMES = {p.name for p in PARAMETERS}


def generate_options() -> dict[str, Any]:
    """The generate command's click options by parameter name."""
    command = typer.main.get_command(app).commands["generate"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_the_cli_covers_the_table(parameter: Parameter) -> None:
    option = generate_options()[parameter.name]
    assert option.opts[0] == cli_name(parameter.name)  # errors name the flag the user typed
    expected = list[parameter.type] if parameter.repeated else parameter.type
    assert option.type_descriptor.annotation == expected  # the type, not Optional of it
    assert option.default is None and option.multiple == parameter.repeated
    assert option.help == parameter.help
    assert option.rich_help_panel.startswith("Generation")  # type: ignore[attr-defined]
    if parameter.cli_short:
        assert parameter.cli_short in option.opts
    assert all(alias in option.opts for alias in parameter.cli_aliases)
    if parameter.cli_off:
        assert option.secondary_opts == [parameter.cli_off]


def test_todays_spellings() -> None:
    """llama.cpp's habits: -n/--n-predict is --max-new-tokens, --temp is --temperature."""
    options = generate_options()
    assert options["max_new_tokens"].opts == ["--max-new-tokens", "--n-predict", "-n"]
    assert options["num_return_sequences"].opts == ["--num-return-sequences"]  # no short flag
    assert options["temperature"].opts == ["--temperature", "--temp"]
    assert "-t" not in options["temperature"].opts  # -t is --threads, as in llama.cpp
    assert options["do_sample"].opts == ["--do-sample"]
    assert options["do_sample"].secondary_opts == ["--greedy"]
    assert options["stop"].metavar == "TEXT"


def test_cli_values_become_overrides() -> None:
    values = parameter_values({"stop": ["a\\nb", "c"], "top_k": 3})
    assert set(values) == NAMES
    assert values["stop"] == ("a\nb", "c") and values["top_k"] == 3 and values["seed"] is None
    assert parameter_values({"stop": []})["stop"] is None


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_the_request_format_accepts_every_entry(parameter: Parameter) -> None:
    assert PARAMETER_TYPES[parameter.name] is parameter.json_type
    sample = {int: 2, float: 0.5, bool: True, str: "x"}[parameter.type]
    value: Any = [sample] if parameter.repeated else sample
    if parameter.json_type is dict:  # an object, as OpenAI's logit_bias: {"id": bias}
        value = {"7": 1.5}
    body = {"inputs": {"input_string": ["a"]}, "parameters": {parameter.name: value}}
    request = parse_request(json.dumps(body), "req.json")
    expected = tuple(value) if parameter.json_type is list else value
    assert request.parameters[parameter.name] == expected


@pytest.mark.parametrize("parameter", PARAMETERS, ids=lambda p: p.name)
def test_generation_params_has_every_entry(parameter: Parameter) -> None:
    by_name = {f.name: f for f in dataclasses.fields(GenerationParams)}
    assert by_name[parameter.name].default == parameter.field_default
    if parameter.model_setting:
        assert TRANSFORMERS_DEFAULTS[parameter.name] == parameter.default
    else:
        assert parameter.name not in TRANSFORMERS_DEFAULTS


def test_defaults_are_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GenerationConfig()
    for name, default in TRANSFORMERS_DEFAULTS.items():
        assert getattr(config, name) == default, name


@pytest.mark.parametrize("parameter", [p for p in PARAMETERS if p.rules], ids=lambda p: p.name)
def test_checks_come_from_the_table(parameter: Parameter) -> None:
    """A value each rule refuses is refused by GenerationParams, naming the parameter."""
    bad = {int: -(2**64), float: -1.0, str: ""}[parameter.type]
    if parameter.type is float and parameter.problem(bad) is None:  # OpenAI's penalties
        bad = 3.0
    value = (bad,) if parameter.repeated else bad
    assert parameter.problem(value) is not None
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve({}, {"do_sample": True, parameter.name: value})
    assert caught.value.param == parameter.name
    assert "--" not in caught.value.render()  # the engine spells no flag


SAMPLING = [p for p in PARAMETERS if p.implies_sampling]


def a_valid_value(parameter: Parameter) -> Any:
    """A value in range for any sampling parameter (0.5 for a float, 2 for an int)."""
    return {int: 2, float: 0.5, bool: True, str: "x"}[parameter.type]


def test_the_sampling_parameters() -> None:
    names = [p.name for p in SAMPLING]
    assert {"temperature", "top_k", "top_p"} <= set(names)
    assert generation_params.SAMPLING_IMPLIED_BY == tuple(names)


@pytest.mark.parametrize("parameter", SAMPLING, ids=lambda p: p.name)
def test_sampling_parameters_turn_sampling_on(parameter: Parameter) -> None:
    """Given explicitly, a sampling parameter samples unless do_sample is given: with
    do_sample false it is listed for a warning, never dropped silently."""
    value = a_valid_value(parameter)
    params = GenerationParams.resolve({}, {parameter.name: value})
    assert params.do_sample and params.greedy_ignores == ()
    params = GenerationParams.resolve({}, {parameter.name: value, "do_sample": False})
    assert not params.do_sample and params.greedy_ignores == (parameter.name,)
    params = GenerationParams.resolve({"do_sample": True}, {"do_sample": False})
    assert not params.do_sample and params.greedy_ignores == ()
    # A model's own sampling settings imply nothing (gpt2's top_k 50 is everyone's default).
    assert not GenerationParams.resolve({parameter.name: value}, {}).do_sample


def test_temperature_zero_means_greedy() -> None:
    params = GenerationParams.resolve({"do_sample": True}, {"temperature": 0.0})
    assert not params.do_sample and params.temperature == 1.0 and params.greedy_ignores == ()
    params = GenerationParams.resolve({}, {"temperature": 0.0, "top_p": 0.5})
    assert not params.do_sample and params.greedy_ignores == ("top_p",)
    with pytest.raises(InputError) as caught:
        GenerationParams.resolve({}, {"temperature": 0.0, "do_sample": True})
    assert caught.value.param == "temperature"


def test_the_length_default() -> None:
    """The pinned text-generation pipeline's: max_new_tokens 256 unless the model sets a length
    (a max_length other than transformers' 20, or max_new_tokens)."""
    default = generation_params.PIPELINE_MAX_NEW_TOKENS
    for model in ({}, {"max_length": 20}):
        params = GenerationParams.resolve(model, {})
        assert params.max_new_tokens == default and params.default_length
    params = GenerationParams.resolve({"max_length": 50}, {})
    assert params.max_new_tokens is None and params.max_length == 50
    params = GenerationParams.resolve({"max_length": 50}, {}, model_length=False)  # gpt2
    assert params.max_new_tokens == default and params.default_length
    assert GenerationParams.resolve({"max_new_tokens": 9}, {}).max_new_tokens == 9
    given = GenerationParams.resolve({}, {"max_new_tokens": 9})
    assert given.max_new_tokens == 9 and not given.default_length
    given = GenerationParams.resolve({}, {"max_length": 30})
    assert given.max_new_tokens is None and not given.default_length


# --- no other module lists the parameters ----------------------------------------------------


def listings(tree: ast.AST, least: int = 4) -> list[tuple[int, list[str]]]:
    """Places that name `least` or more table parameters together (a warper taking temperature,
    top_k and top_p is not a listing): collection literals of
    strings or keys, function signatures, class bodies (dataclass fields)."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Dict):
            names = [k.value for k in node.keys if isinstance(k, ast.Constant)]
        elif isinstance(node, ast.List | ast.Tuple | ast.Set):
            names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
        elif isinstance(node, ast.FunctionDef):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        elif isinstance(node, ast.ClassDef):
            names = [
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            ]
        hits = [n for n in names if isinstance(n, str) and n in NAMES]
        if len(hits) >= least:
            found.append((node.lineno, hits))
    return found


# Listings outside the table still to be derived from it, by the name they are assigned to
# (none left: a model's generation_config.json is checked with the table's own rules).
KNOWN: set[str] = set()


def known_lines(tree: ast.Module) -> set[int]:
    """Lines of top-level assignments to a name in KNOWN."""
    lines: set[int] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id in KNOWN for t in targets):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def test_no_other_module_lists_the_parameters() -> None:
    offenders: dict[str, Any] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        if relative == "generation_params.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = known_lines(tree)
        found = [(line, names) for line, names in listings(tree) if line not in skip]
        if found:
            offenders[relative] = found
    assert offenders == {}


def test_the_listing_finder_finds_listings() -> None:
    before = ast.parse(
        "TYPES = {'max_length': int, 'top_k': int, 'top_p': float, 'seed': int}\n"
        "def generate(texts, max_length=None, top_k=None, top_p=None, stop=None): ...\n"
    )
    assert sorted(line for line, _ in listings(before)) == [1, 2]
    assert listings(ast.parse("check(params.top_k); name('max_length'); x = 'top_p'")) == []


NEW_ENTRY = """    Parameter(
        "epsilon_cutoff",
        float,
        "Sample only tokens more likely than this.",
        0.0,
        (Rule(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)"),),
    ),
"""

ADD_ONE = f"""
import importlib.util, json, sys
from pathlib import Path
import gpt2cli
path = Path(gpt2cli.__file__).parent / "generation_params.py"
source = path.read_text().replace("\\n)\\n\\nBY_NAME", "\\n" + {NEW_ENTRY!r} + ")\\n\\nBY_NAME", 1)
assert "epsilon_cutoff" in source
spec = importlib.util.spec_from_loader("gpt2cli.generation_params", loader=None)
module = importlib.util.module_from_spec(spec)
module.__file__ = str(path)
sys.modules[spec.name] = module
exec(compile(source, str(path), "exec"), module.__dict__)

import typer.main
from gpt2cli.cli import app, run
from gpt2cli.decoding import GenerationParams
from gpt2cli.errors import InputError
from gpt2cli.request_formats import parse_request

command = typer.main.get_command(app).commands["generate"]
option = next(p for p in command.params if p.name == "epsilon_cutoff")
request = parse_request('{{"input_data": ["a"], "params": {{"epsilon_cutoff": 0.1}}}}')
params = GenerationParams.resolve({{}}, {{"epsilon_cutoff": 0.05}})
try:
    GenerationParams.resolve({{}}, {{"epsilon_cutoff": 2.0}})
    refused = None
except InputError as exc:
    refused = exc.render(lambda name: "--" + name.replace("_", "-"))
print(json.dumps([option.opts, request.parameters, params.epsilon_cutoff, refused]))
"""


def test_adding_an_entry_needs_no_other_edit() -> None:
    """One more entry in the table (as `epsilon_cutoff` would be) reaches the CLI, the request
    format and GenerationParams with its check, with no edit anywhere else."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", ADD_ONE], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    opts, parameters, value, refused = json.loads(result.stdout)
    assert opts == ["--epsilon-cutoff"] and parameters == {"epsilon_cutoff": 0.1} and value == 0.05
    assert refused == "--epsilon-cutoff: must be in [0, 1), got 2.0"
