"""The command-line tools: every console script named in pyproject.toml points at a real ``main``, and
its ``--help`` explains every option."""
from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def console_scripts() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_console_script_has_help_for_every_option(script):
    module, func = console_scripts()[script].split(":")
    main = getattr(importlib.import_module(module), func)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = out.getvalue()
    assert text.startswith("usage:")
    # every option line carries a help text: "  --name VALUE   what it does", not a bare "  --name VALUE"
    bare = [line for line in text.splitlines()
            if re.match(r"^\s{2}-", line) and len(re.split(r"\s{2,}", line.strip())) < 2]
    # an option whose signature is too long gets its help on the next line; accept that case only
    lines = text.splitlines()
    bare = [b for b in bare if not (lines.index(b) + 1 < len(lines)
                                    and re.match(r"^\s{6,}\S", lines[lines.index(b) + 1]))]
    assert not bare, f"{script} --help has options without help: {bare}"
