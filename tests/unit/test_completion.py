"""``reconciler completion bash|zsh``: the scripts parse, and complete what the parser has.

Each script is made by the installed command, as a user makes it; the shell
itself checks its syntax (``bash -n``, ``zsh -n``), and bash runs the
completion function the way readline calls it, so that what is tested is what
a user sees after pressing TAB.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.cli import SUBCOMMANDS
from tests.support import RECONCILER

SHELLS = ("bash", "zsh")


def script(shell: str) -> str:
    result = subprocess.run(
        [RECONCILER, "completion", shell], capture_output=True, text=True, timeout=30
    )
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


def shell_or_skip(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed here: its completion script is not syntax-checked")
    return path


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_is_accepted_by_the_shell(shell: str, tmp_path: Path) -> None:
    executable = shell_or_skip(shell)
    path = tmp_path / f"reconciler.{shell}"
    path.write_text(script(shell))
    checked = subprocess.run(
        [executable, "-n", str(path)], capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stderr) == (0, "")


def test_the_bash_script_lists_every_subcommand() -> None:
    listed = re.search(r"^_shtab_reconciler_subparsers=\((.*)\)$", script("bash"), re.M)
    assert listed is not None
    assert sorted(listed[1].split()) == sorted(s.name for s in SUBCOMMANDS)


def test_the_zsh_script_lists_every_subcommand_with_its_help() -> None:
    commands = r"_shtab_reconciler_commands\(\) \{\n  local _commands=\(\n(.*?)\n  \)"
    listed = re.search(commands, script("zsh"), re.S)
    assert listed is not None
    names = [line.strip().split(":", 1)[0] for line in listed[1].splitlines()]
    assert sorted(names) == sorted(s.name for s in SUBCOMMANDS)
    assert "logs:'a collector" in listed[1]


def bash_complete(line: str, tmp_path: Path) -> list[str]:
    """What bash offers after ``line`` (the cursor at its end), as readline asks for it."""
    shell = shell_or_skip("bash")
    path = tmp_path / "reconciler.bash"
    path.write_text(script("bash"))
    words = line.split(" ")
    driver = (
        f"source {path}\n"
        f"COMP_WORDS=({' '.join(repr(word) for word in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={line!r}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_shtab_reconciler\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        [shell, "--norc", "-c", driver], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


def test_bash_completes_subcommands_flags_and_paths(tmp_path: Path) -> None:
    assert bash_complete("reconciler ", tmp_path) == [s.name for s in SUBCOMMANDS]
    assert bash_complete("reconciler lo", tmp_path) == ["logs"]
    assert set(bash_complete("reconciler logs web --", tmp_path)) >= {
        "--lines", "--follow", "--previous", "--state-dir", "--config", "--socket",
    }  # fmt: skip
    assert bash_complete("reconciler completion ", tmp_path) == ["bash", "zsh"]
    (tmp_path / "state-here").mkdir()
    (tmp_path / "state-file").write_text("")
    # A DIR option completes directories only; a FILE option files too.
    assert bash_complete("reconciler logs web --state-dir sta", tmp_path) == ["state-here"]
    assert sorted(bash_complete("reconciler run --config sta", tmp_path)) == [
        "state-file", "state-here",
    ]  # fmt: skip


def test_the_command_is_in_the_help_and_shtab_is_imported_only_for_it() -> None:
    result = subprocess.run([RECONCILER, "--help"], capture_output=True, text=True, timeout=30)
    assert re.search(r"^ +completion\s+print a bash or zsh completion script", result.stdout, re.M)
    usage = subprocess.run(
        [RECONCILER, "completion", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "source <(reconciler completion bash)" in usage and "_reconciler" in usage
    code = (
        "import sys\n"
        "from reconciler.cli import main\n"
        "main(['completion', '--help'])\n"
        "print('shtab' in sys.modules)\n"
    )
    lazy = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert lazy.stdout.splitlines()[-1] == "False"


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = subprocess.run(
        [RECONCILER, "completion", "fish"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
