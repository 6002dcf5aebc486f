"""Every command's --help speaks plainly: arguments by name, options by what they take, flags by nothing."""

from __future__ import annotations

import re

import pytest

COMMANDS = [[], ["train"], ["predict"], ["embed"], ["export"], ["report"], ["demo"], ["model", "info"],
            ["data"], ["data", "import"], ["data", "import", "sky"], ["data", "import", "catalog"],
            ["data", "info"], ["data", "synth"], ["grid"], ["grid", "run"], ["grid", "status"], ["grid", "export"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "astroclass")
def test_help_has_no_type_placeholders(cli, command):
    code, out, err = cli(*command, "--help")
    assert code == 0, err
    placeholders = re.findall(r"<(?:bool|path|str|int|float|list\[[^\]]*\]|[a-z]+ range)>|\{[a-z_]+\}", out)
    assert placeholders == [], placeholders
    assert "Usage: astroclass" in out
