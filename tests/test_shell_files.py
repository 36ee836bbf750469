"""Completions and man page: committed files match the app, the shells really complete, the page
renders without warnings."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "scripts" / "gen_shell_files.py"
BIN = Path(sys.executable).parent  # where the gpt2cli console script is installed


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_shell_files", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
COMMANDS = {c.path.removeprefix("gpt2cli "): c for c in gen.subcommands(gen._root_command())}


def _long_options(path: str) -> set[str]:
    cmd = COMMANDS[path] if path else gen._root_command()
    return {name for name in gen._option_names(cmd) if name.startswith("--")}


def _shell_env() -> dict[str, str]:
    assert (BIN / "gpt2cli").exists(), f"no gpt2cli console script in {BIN}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("_GPT2CLI")}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "NO_COLOR": "1"}


def test_committed_files_equal_fresh_generation() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ bash


def bash_complete(*lines: str) -> list[list[str]]:
    """Complete each command line (the last word is the one being completed) in one real bash,
    through the function that the sourced script registered for gpt2cli."""
    script = [f"source {shlex.quote(str(ROOT / 'completions/gpt2cli.bash'))}"]
    script.append("fn=$(complete -p gpt2cli | sed -E 's/.* -F ([^ ]+) .*/\\1/')")
    for line in lines:
        words = line.split(" ")
        quoted = " ".join(shlex.quote(w) for w in words)
        script += [
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}",
            f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}",
            f'"$fn" gpt2cli {shlex.quote(words[-1])} {shlex.quote(words[-2])}',
            'printf "%s\\n" "${COMPREPLY[@]}"; echo "--end--"',
        ]
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
        capture_output=True,
        text=True,
        env=_shell_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    chunks = result.stdout.split("--end--\n")[: len(lines)]
    return [[w for w in chunk.splitlines() if w] for chunk in chunks]


def test_bash_completes_subcommand_names_and_options() -> None:
    names, prefixed, tokenize_opts = bash_complete(
        "gpt2cli ", "gpt2cli tok", "gpt2cli tokenize --co"
    )
    assert set(names) == {path.split(" ")[0] for path in COMMANDS}  # `finetune clm`: finetune
    assert prefixed == ["tokenize"]
    assert tokenize_opts == ["--count"]


def test_bash_completes_every_option_of_every_subcommand() -> None:
    paths = sorted(COMMANDS)
    results = bash_complete(*(f"gpt2cli {path} --" for path in paths), "gpt2cli --")
    for path, offered in zip([*paths, ""], results, strict=True):
        assert set(offered) == _long_options(path), path


def test_bash_completes_an_option_of_generate() -> None:
    [offered] = bash_complete("gpt2cli generate --max-new")
    assert offered == ["--max-new-tokens"]


def test_bash_completes_choices_of_an_option() -> None:
    backends, poolings = bash_complete("gpt2cli generate --backend ", "gpt2cli embed --pooling m")
    assert sorted(backends) == ["auto", "onnx", "torch"]
    assert poolings == ["mean"]


def test_bash_falls_back_to_file_names() -> None:
    # Nothing from gpt2cli after -f: `complete -o default` lets bash complete file names.
    [offered] = bash_complete("gpt2cli tokenize -f ")
    assert offered == []
    spec = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            f"source {ROOT / 'completions/gpt2cli.bash'}; complete -p gpt2cli",
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert "-o default" in spec


# ------------------------------------------------------------------------------------ zsh, fish


def _zsh(body: str) -> str:
    script = (
        f"fpath=({shlex.quote(str(ROOT / 'completions'))} $fpath)\n"
        "autoload -Uz compinit && compinit -u -D\n"
        # Stand-ins that print what the completion system would have been asked to offer.
        '_arguments() { print -rl -- "$@" }\n'
        "_files() { print -- _files }\n" + body
    )
    result = subprocess.run(
        ["zsh", "-f", "-c", script], capture_output=True, text=True, env=_shell_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_on_the_first_tab_when_autoloaded() -> None:
    out = _zsh("words=(gpt2cli tok); CURRENT=2; $_comps[gpt2cli]\n")
    assert '"tokenize":' in out
    out = _zsh("words=(gpt2cli tokenize --co); CURRENT=3; $_comps[gpt2cli]\n")
    assert '"--count":' in out and "--lines" not in out
    assert _zsh("words=(gpt2cli tokenize -f ''); CURRENT=4; $_comps[gpt2cli]\n").strip() == "_files"


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_script_registers_when_sourced() -> None:
    out = _zsh(
        f"source {shlex.quote(str(ROOT / 'completions/_gpt2cli'))}\n"
        "print -- $_comps[gpt2cli]\n"
        "words=(gpt2cli tok); CURRENT=2; $_comps[gpt2cli]\n"
    )
    assert out.splitlines()[0] == "_gpt2cli"
    assert '"tokenize":' in out


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_subcommands_options_and_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    script = (
        f"source {shlex.quote(str(ROOT / 'completions/gpt2cli.fish'))}\n"
        "complete -C'gpt2cli tok'; echo --end--\n"
        "complete -C'gpt2cli tokenize --co'; echo --end--\n"
        "complete -C'gpt2cli tokenize -f no'; echo --end--\n"
    )
    result = subprocess.run(
        ["fish", "--no-config", "-c", script],
        capture_output=True,
        text=True,
        env=_shell_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    names, options, files = result.stdout.split("--end--\n")[:3]
    assert [line.split("\t")[0] for line in names.splitlines()] == ["tokenize"]
    assert [line.split("\t")[0] for line in options.splitlines()] == ["--count"]
    assert files.split() == ["notes.txt"]


# -------------------------------------------------------------------------------------- man page

MAN = ROOT / "man" / "gpt2cli.1"


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_man_page_renders_without_warnings_and_covers_every_option() -> None:
    result = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-P-cbou", "-rLL=200n", str(MAN)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    for section in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "EXAMPLES"):
        assert f"\n{section}\n" in text
    for path in COMMANDS:
        assert f"GPT2CLI {path.upper()}\n" in text
        assert f"gpt2cli {path} [OPTIONS]" in text
    for path in ["", *COMMANDS]:
        for option in _long_options(path):
            assert option in text, (path, option)
    for code in (0, 1, 2, 130):
        assert f"\n       {code} " in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
def test_man_dash_l_shows_the_page_without_warnings() -> None:
    result = subprocess.run(
        ["man", "--warnings", "-l", str(MAN)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "gpt2cli tokenize [OPTIONS]" in result.stdout


def test_examples_are_checked_against_the_app() -> None:
    commands = {c.path: c for c in COMMANDS.values()}
    root = gen._root_command()
    gen.check_example("echo 1 | gpt2cli tokenize --decode", commands, root)
    with pytest.raises(SystemExit, match="unknown option --no-such-flag"):
        gen.check_example("gpt2cli tokenize --no-such-flag", commands, root)
    with pytest.raises(SystemExit, match="runs no gpt2cli command"):
        gen.check_example("gpt2cli summarize --model gpt2", commands, root)
