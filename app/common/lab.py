"""The former name of :mod:`app.common.image_attack`: importing it gives that module itself. Kept only
while :mod:`app.common.models` still imports ``lab`` (for ``first_view_index``); new code imports
:mod:`app.common.image_attack`."""
import sys

from . import image_attack

sys.modules[__name__] = image_attack
