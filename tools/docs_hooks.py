"""Pages the documentation generates from the code when it is built: the run options from RunConfig's fields
(type, default, help, section) and every command's --help."""

from __future__ import annotations

import os
from typing import Any


def _run_options() -> str:
    import dataclasses
    import typing

    from astroclass.runconfig import SECTIONS, RunConfig

    kinds = typing.get_type_hints(RunConfig)
    defaults = RunConfig.defaults()
    out = []
    for section, title in SECTIONS.items():
        rows = [f for f in dataclasses.fields(RunConfig) if f.metadata.get("section") == section]
        if not rows:
            continue
        out += [f"## {title}", "", "| option | type | default | what it does |", "|---|---|---|---|"]
        for f in rows:
            kind = str(kinds[f.name]).replace("<class '", "").replace("'>", "").replace("|", "or")
            default = defaults.get(f.name)
            shown = "(none)" if default is None else f"`{default}`"
            text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
            out.append(f"| `{f.name}` | {kind} | {shown} | {text} |")
        out.append("")
    return "\n".join(out)


def _commands() -> str:
    import contextlib
    import io

    import typer

    from astroclass.cli import _plain_help, app

    command = _plain_help(typer.main.get_command(app))
    out = []

    def walk(cmd: Any, path: list[str]) -> None:
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            command.main(args=[*path, "--help"], prog_name="astroclass", standalone_mode=True)
        name = " ".join(["astroclass", *path])
        out.extend([f"## `{name}`", "", "```text", text.getvalue().rstrip(), "```", ""])
        for sub in sorted(getattr(cmd, "commands", {})):
            walk(cmd.commands[sub], [*path, sub])

    walk(command, [])
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    os.environ.update(COLUMNS="100", NO_COLOR="1", TERM="dumb")
    if "<!-- run-options -->" in markdown:
        markdown = markdown.replace("<!-- run-options -->", _run_options())
    if "<!-- cli-help -->" in markdown:
        markdown = markdown.replace("<!-- cli-help -->", _commands())
    return markdown
