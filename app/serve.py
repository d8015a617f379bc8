"""Start the CAS Lab server warm: ``python -m app.serve [streamlit options]`` (what ``scripts/app.sh`` runs).

``streamlit run app/main.py`` imports a page's libraries (PyTorch, pandas, Plotly, about 1.5 s on a
laptop CPU) only when the first visitor arrives. This launcher imports them first and then hands over
to ``streamlit run``, so that once the server answers, the first page is drawn in about two seconds.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see app/main.py)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas  # noqa: E402,F401
import plotly.graph_objects  # noqa: E402,F401
import torch  # noqa: E402,F401
from streamlit.web import cli  # noqa: E402

import cas  # noqa: E402,F401
from app.common import figures, lab  # noqa: E402,F401


def main() -> None:
    sys.argv = ["streamlit", "run", str(ROOT / "app" / "main.py"), *sys.argv[1:]]
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
