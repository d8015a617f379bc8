"""CAS Lab, the Streamlit app: ``streamlit run app/main.py``.

This entry script only sets up the page and the navigation (the pages are listed in
:mod:`app.common.pages`); each page is a function, ``page()``, in its file in ``app/views/`` (not
``pages/``: Streamlit would also list that folder on its own).
"""
from __future__ import annotations

import os
from pathlib import Path

# PyTorch's CPU threads wait for work by spinning. When the CPU is busy with anything else (a training
# run, another session), spinning threads slow a single-image attack down many times over; passive
# waiting costs nothing noticeable. This must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import streamlit as st

from app.common import presentation
from app.common.pages import DEFAULT_PAGE, PAGES, PREFIXES
from app.common.url_state import keep_widget_state

VIEWS = Path(__file__).resolve().parent / "views"

present = presentation.start()  # ?present=1: presentation mode (sidebar folded, large text and charts)
st.set_page_config(page_title="CAS Lab", page_icon=":material/neurology:", layout="wide",
                   initial_sidebar_state="collapsed" if present else "auto")
keep_widget_state(PREFIXES)  # settings survive a visit to another page

pages = [st.Page(VIEWS / p.file, title=p.title, icon=p.icon, url_path=p.url, default=p.url == DEFAULT_PAGE)
         for p in PAGES]

with st.sidebar:
    st.markdown("### :material/neurology: CAS Lab\n"
                "Adversarial examples and Channel-wise Activation Suppressing on CIFAR-10.")
    presentation.switch()

try:
    st.navigation(pages).run()
finally:  # also after a page's st.stop(): pages rewrite the URL's parameters, the mode stays in it
    presentation.keep_in_url()
