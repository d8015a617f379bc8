"""Start the CAS Lab server warm: ``python -m app.serve [streamlit options]`` (what ``scripts/app.sh`` runs).

``streamlit run app/main.py`` imports a page's libraries (PyTorch, pandas, Plotly, about 1.5 s on a
laptop CPU) only when the first visitor arrives. This launcher imports them first and then hands over
to ``streamlit run``, so that once the server answers, the first page is drawn in about two seconds;
while the server starts, a thread loads what the first page needs (:func:`warm_up`).

The server answers this machine only (``localhost``) unless an address is given: a
``--server.address`` option (``--server.address 0.0.0.0`` opens it to the network), the
``STREAMLIT_SERVER_ADDRESS`` variable, or ``server.address`` in a Streamlit config file.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: config files are not read here, so the defaults apply
    tomllib = None

import app  # noqa: F401,E402 - how PyTorch's threads wait, set before torch loads (app/__init__.py)
import pandas  # noqa: F401
import plotly.graph_objects  # noqa: F401
import torch  # noqa: F401
from streamlit import net_util
from streamlit.web import cli

import cas  # noqa: F401
from app.common import figures, image_attack  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


# settings this launcher supplies unless the user sets them: serve this machine only, send nothing
DEFAULTS = {"server.address": "localhost", "browser.gatherUsageStats": "false",
            # no watching of the source files for changes: after every page run the watcher walks every
            # imported module's path, which cost a served page more CPU than drawing it (a class of thirty
            # pays it thirty times); `streamlit run app/main.py` still reloads on save while developing
            "server.fileWatcherType": "none", "server.runOnSave": "false",
            # no full garbage collection after every page run (Python's own collector still runs): on a
            # class server it was a third of the CPU a cached page costs, paid by every visit in turn
            "runner.postScriptGC": "false"}


def _config_files_set(option: str) -> bool:
    """Whether a Streamlit config file (the user's, or the one in the working folder) sets ``option``."""
    if tomllib is None:
        return False
    section, name = option.split(".")
    for f in (Path.home() / ".streamlit" / "config.toml", Path.cwd() / ".streamlit" / "config.toml"):
        try:
            if name in tomllib.loads(f.read_text()).get(section, {}):
                return True
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return False


def is_set(option: str, args: list[str]) -> bool:
    """Whether the command line, the environment or a Streamlit config file sets ``option``."""
    flag = "--" + option
    if any(a == flag or a.startswith(flag + "=") for a in args):
        return True
    if os.environ.get("STREAMLIT_" + option.replace(".", "_").upper()):
        return True
    return _config_files_set(option)


def _address(args: list[str]) -> str | None:
    """The server address the command line or the environment asks for (None: not given there)."""
    for i, a in enumerate(args):
        if a == "--server.address" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--server.address="):
            return a.split("=", 1)[1]
    return os.environ.get("STREAMLIT_SERVER_ADDRESS") or None


def streamlit_args(args: list[str]) -> list[str]:
    """The ``streamlit run`` arguments: the app, :data:`DEFAULTS` the user left unset, then ``args``.
    When the app is opened to the network, visitors see an error's type but not its traceback (which
    names the server's files), unless ``client.showErrorDetails`` is set."""
    defaults = dict(DEFAULTS)
    address = _address(args)
    if address and address not in ("localhost", "127.0.0.1", "::1"):
        defaults["client.showErrorDetails"] = "type"
    extra = [a for option, value in defaults.items() if not is_set(option, args) for a in ("--" + option, value)]
    return ["run", str(ROOT / "app" / "main.py"), *extra, *args]


def warm_up() -> None:
    """What a first visit needs and every visitor shares, computed while the server starts instead of
    while the first visitor waits: the CIFAR-10 test images, the default model and the first view's
    image, and the lecture's bundled models, loaded but not run (Streamlit's shared caches; a visitor
    who arrives earlier waits for the same computation). No attack runs here: the lecture's results wait
    for their first visitor."""
    from app.common import models
    from app.common import lecture_story as lecture

    try:
        available = models.list_available()
        models.first_image(available)
        for entry in available:
            if entry["name"] in lecture.MODEL_NAMES and entry["source"] == "bundled":
                models.load_from_path(entry["path"], name=entry["name"])
    except Exception as e:  # noqa: BLE001 - a failed warm-up only means the first visit does the work
        print(f"CAS Lab: warm-up skipped ({type(e).__name__}: {e})", file=sys.stderr)
    # Python's full garbage collection walks every object the process holds; with PyTorch, Plotly and
    # Streamlit loaded that is a quarter of a million, about 140 ms with the lock held, and thirty
    # visitors' page runs set off several. What is loaded by now stays for the server's life: moved out
    # of the collector's sight, a full collection takes well under a millisecond.
    gc.freeze()


WARM_UP_THREAD = "cas-warm-up"


class _NotFromWarmUp(logging.Filter):
    """Streamlit warns of a thread with no page context; the warm-up has none, on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != WARM_UP_THREAD


def main() -> None:
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(_NotFromWarmUp())
    threading.Thread(target=warm_up, name=WARM_UP_THREAD, daemon=True).start()
    # Streamlit asks an internet service for this machine's public address to print it when the app is
    # open to the network; nothing here may reach the internet, so that line is left out
    net_util.get_external_ip = lambda: None
    sys.argv = ["streamlit", *streamlit_args(sys.argv[1:])]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
