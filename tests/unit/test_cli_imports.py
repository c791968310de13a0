"""The command line stays light: building the parser imports no pydantic and no daemon."""

from __future__ import annotations

import subprocess
import sys

from reconciler.cli.common import SPEC_SUFFIX
from reconciler.spec import SPEC_SUFFIX as SPEC_SUFFIX_OF_SPEC


def test_the_cli_copy_of_the_spec_suffix_is_the_same() -> None:
    assert SPEC_SUFFIX == SPEC_SUFFIX_OF_SPEC


def test_parsing_a_client_command_imports_no_pydantic_and_no_daemon() -> None:
    code = (
        "import sys\n"
        "from reconciler.cli import parse_args\n"
        "parse_args(['status', '--json'])\n"
        "heavy = [m for m in ('pydantic', 'reconciler.daemon', 'reconciler.process', 'psutil')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "", result.stdout
