"""Page settings in the URL, so that a copied link reproduces the view.

A page declares its settings as a list of :class:`Param` (session-state key, URL name, default, parser).
At the top of the page:

* :func:`load_from_url` copies the URL's values into ``st.session_state`` the first time the page runs in
  a session (a link just opened) and fills in defaults for the rest; it returns a message for every URL
  value it had to ignore;
* widgets are then created with ``key=param.key`` and *no* ``value=`` (the value comes from session
  state, so no widget ever sees two defaults);
* :func:`write_to_url` (at the end of the page) writes the current values back to ``st.query_params``,
  leaving out those equal to their default so that links stay short.

:func:`keep_widget_state` keeps widget values alive while the user visits another page, and
:func:`widget_key` (around a widget's key) makes the browser show the kept value when the widget comes back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import streamlit as st


@dataclass(frozen=True)
class Param:
    """One setting of a page: ``key`` in session state, ``name`` in the URL, its ``default``, and
    ``parse`` (URL text -> value; raises ``ValueError`` with a readable message for a bad value).
    ``dump`` turns a value back into URL text."""

    key: str
    name: str
    default: Any
    parse: Callable[[str], Any]
    dump: Callable[[Any], str] = str


# -- parsers ---------------------------------------------------------------------------------------

def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """Parser for an integer in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise ValueError(f"must be a whole number between {lo} and {hi}") from None
        if not lo <= v <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return v
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """Parser for a number in [lo, hi]."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"must be a number between {lo:g} and {hi:g}") from None
        if math.isnan(v) or not lo <= v <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return v
    return parse


def optional(parse: Callable[[str], Any], empty: str = "auto") -> Callable[[str], Any]:
    """Parser that maps ``empty`` (or an empty string) to None and anything else through ``parse``."""
    def wrapped(text: str) -> Any:
        return None if text in ("", empty) else parse(text)
    return wrapped


def dump_optional(empty: str = "auto") -> Callable[[Any], str]:
    """The writer that goes with :func:`optional`."""
    return lambda v: empty if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def one_of(options: Sequence[str]) -> Callable[[str], str]:
    """Parser for one of a fixed set of words."""
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text
    return parse


def boolean(text: str) -> bool:
    """Parser for 1/0, true/false, yes/no, on/off."""
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def dump_bool(v: Any) -> str:
    return "1" if v else "0"


def dump_number(v: Any) -> str:
    """Short text for a number (8.0 -> '8')."""
    return f"{v:g}" if isinstance(v, float) else str(v)


# -- reading and writing ---------------------------------------------------------------------------

def _url_value(name: str) -> str | None:
    values = st.query_params.get_all(name)
    return values[-1] if values else None


def _flag(page: str) -> str:
    return f"_url_loaded_{page}"


def first_run(page: str) -> bool:
    """True until :func:`load_from_url` has run for ``page`` in this session (a link just opened)."""
    return not st.session_state.get(_flag(page), False)


def load_from_url(page: str, params: Iterable[Param]) -> list[str]:
    """On the page's first run in this session, copy valid URL values into session state; on every run,
    give missing keys their default. Returns one message per ignored URL value."""
    messages = []
    first = first_run(page)
    for p in params:
        if first:
            text = _url_value(p.name)
            if text is not None:
                try:
                    st.session_state[p.key] = p.parse(text)
                except ValueError as e:
                    messages.append(f"`{p.name}={text}` {e}")
        if p.key not in st.session_state:
            st.session_state[p.key] = p.default
    st.session_state[_flag(page)] = True
    return messages


def url_dict(params: Iterable[Param]) -> dict[str, str]:
    """The URL query parameters describing the current values (defaults left out)."""
    out = {}
    for p in params:
        v = st.session_state.get(p.key, p.default)
        if v != p.default:
            out[p.name] = p.dump(v)
    return out


def write_to_url(params: Iterable[Param], extra_names: Iterable[str] = ()) -> dict[str, str]:
    """Make ``st.query_params`` hold exactly the current non-default values of ``params``
    (plus any URL names in ``extra_names`` that are already there). Returns what was written."""
    params = list(params)
    wanted = url_dict(params)
    keep = set(wanted) | set(extra_names)
    for name in list(st.query_params.keys()):
        if name not in keep:
            del st.query_params[name]
    for name, text in wanted.items():
        if st.query_params.get(name) != text:
            st.query_params[name] = text
    return wanted


def keep_widget_state(prefixes: Sequence[str]) -> None:
    """Keep the values of widgets whose keys start with one of ``prefixes`` while another page is shown
    (Streamlit forgets a widget's value when the widget is not drawn). Call it once per run, from the
    entry script, before the page runs: it copies the current values aside and puts back those that
    Streamlit has dropped since. It also counts the runs, for :func:`widget_key`."""
    st.session_state["_run_number"] = st.session_state.get("_run_number", 0) + 1
    kept = st.session_state.setdefault("_kept_widget_values", {})
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(tuple(prefixes)):
            kept[key] = st.session_state[key]
    for key, value in kept.items():
        if key not in st.session_state:
            st.session_state[key] = value


def widget_key(key: str) -> str:
    """Return ``key``, for a widget that is drawn now, after making sure the browser will show the value
    that session state holds for it.

    A widget that was hidden in the previous run (another image source, another attack, a page that
    stopped early) keeps its value in session state, but the browser draws it anew with the widget's
    default value, unaware of the kept one, and sends that default back with the next change. Setting
    the value again through session state makes Streamlit send it along with the widget. Use it only
    for widgets created without ``value=``, as every widget driven by session state here is."""
    run = st.session_state.get("_run_number", 0)
    drawn = st.session_state.setdefault("_widgets_drawn", {})
    if drawn.get(key, -1) < run - 1 and key in st.session_state:
        st.session_state[key] = st.session_state[key]
    drawn[key] = run
    return key
