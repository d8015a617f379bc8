"""What the command-line tools share: a help formatter that shows each option's default (when it has
one worth showing) and keeps the help texts' line breaks readable."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with "(default: X)" after every option that has a real default."""

    def _get_help_string(self, action):
        if action.default in (None, False, True, argparse.SUPPRESS) or action.option_strings == ["-h", "--help"]:
            return action.help
        return super()._get_help_string(action)
