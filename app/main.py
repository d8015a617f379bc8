"""CAS Lab, the Streamlit app: ``streamlit run app/main.py``.

This entry script only sets up the page and the navigation (the pages are listed in
:mod:`app.common.pages`); each page is a function, ``page()``, in its file in ``app/views/`` (not
``pages/``: Streamlit would also list that folder on its own).
"""
from __future__ import annotations

from pathlib import Path

import app  # noqa: F401 - sets how PyTorch's threads wait, before torch is imported (see app/__init__.py)
import streamlit as st

from app.common import presentation
from app.common.pages import DEFAULT_PAGE, PAGES, PREFIXES
from app.common.url_state import keep_widget_state

VIEWS = Path(__file__).resolve().parent / "views"

present = presentation.start()  # ?present=1: presentation mode (sidebar folded, large text and charts)
st.set_page_config(page_title="CAS Lab", page_icon=":material/neurology:", layout="wide",
                   initial_sidebar_state="collapsed" if present else "auto")
keep_widget_state(PREFIXES)  # settings survive a visit to another page


def _page(p, default: bool = False, hidden: bool = False) -> st.Page:
    """The Streamlit page of ``p``. The default page answers the bare address, which makes Streamlit drop
    its own path; a hidden twin at that path (``/attack_lab``) opens the same page by its address."""
    url = f"{p.url}-home" if default else p.url  # a page's identity is its path: the twin keeps the real one
    return st.Page(VIEWS / p.file, title=p.title, icon=p.icon, url_path=url, default=default,
                   visibility="hidden" if hidden else "visible")


pages = [_page(p, default=p.url == DEFAULT_PAGE) for p in PAGES]
pages += [_page(p, hidden=True) for p in PAGES if p.url == DEFAULT_PAGE]

with st.sidebar:
    st.markdown("### :material/neurology: CAS Lab\n"
                "Adversarial examples and Channel-wise Activation Suppressing on CIFAR-10.")
    presentation.switch()

try:
    st.navigation(pages).run()
finally:  # also after a page's st.stop(): pages rewrite the URL's parameters, the mode stays in it
    presentation.keep_in_url()
