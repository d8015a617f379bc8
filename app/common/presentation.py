"""Presentation mode, for a projector: ``?present=1`` in any page's link, or the sidebar's switch.

It collapses the sidebar, enlarges the text, the images (at least 384 pixels) and the charts' fonts, and
keeps the layouts within a 1024-pixel-wide screen. The setting belongs to the browser session and is
kept in the URL on every page, so a link opens a slide already in presentation mode.
"""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from . import figures
from .url_state import boolean

KEY = "present"  # session state, the switch's key and the URL name
IMAGE_SIZE = 384  # pixels: the smallest image size in presentation mode
CSS = """
<style>
[data-testid="stMainBlockContainer"] { max-width: 100%; padding: 2.5rem 1.5rem 4rem 1.5rem; }
[data-testid="stMainBlockContainer"] p, [data-testid="stMainBlockContainer"] li { font-size: 1.2rem; }
[data-testid="stMainBlockContainer"] [data-testid="stCaptionContainer"] p { font-size: 1.05rem; }
[data-testid="stMainBlockContainer"] button p { font-size: 1.15rem; }
[data-testid="stImage"] img { max-width: 100%; height: auto; }
</style>
"""


def is_on() -> bool:
    """Whether this browser session is in presentation mode (False outside a page run)."""
    return get_script_run_ctx(suppress_warning=True) is not None and bool(st.session_state.get(KEY, False))


def start() -> bool:
    """Read ``?present=`` when a link is opened (the session's first run); returns the current mode.
    Call it from the entry script before anything is drawn."""
    if "_present_loaded" not in st.session_state:
        st.session_state["_present_loaded"] = True
        text = st.query_params.get(KEY)
        if text is not None:
            try:
                st.session_state[KEY] = boolean(text)
            except ValueError:
                pass
    st.session_state.setdefault(KEY, False)
    return is_on()


def switch(where=st) -> None:
    """The switch (in the sidebar), and the styles of presentation mode when it is on."""
    where.toggle("Presentation mode", key=KEY,
                 help="For a projector: sidebar folded away, larger text, images and chart fonts. "
                      "Kept in the link as ?present=1.")
    if is_on():
        st.markdown(CSS, unsafe_allow_html=True)


def keep_in_url() -> None:
    """Put ``present=1`` back into the URL (pages rewrite their own parameters); call after the page."""
    if is_on():
        if st.query_params.get(KEY) != "1":
            st.query_params[KEY] = "1"
    elif KEY in st.query_params:
        del st.query_params[KEY]


big_fonts = figures.big_fonts  # larger fonts in presentation mode (figures ask is_on, below)


def image_size(normal: int) -> int:
    """The size to draw an image at: ``normal``, or at least :data:`IMAGE_SIZE` in presentation mode."""
    return max(normal, IMAGE_SIZE) if is_on() else normal


# the figure builders stay free of Streamlit: they ask this function whether to use large fonts
figures.presentation = is_on
