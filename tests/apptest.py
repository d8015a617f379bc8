"""Helpers for the AppTest page tests: a run's errors and its text."""
from __future__ import annotations


def assert_clean(at) -> None:
    """No exception reached the page."""
    assert not at.exception, [e.value for e in at.exception]


def page_text(at) -> str:
    """Everything a run wrote (markdown, captions, info and warning boxes, subheaders), one line each."""
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.info, *at.warning, *at.subheader])
