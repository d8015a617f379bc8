"""The app's pages, listed once: their files, titles, icons, addresses and the prefix of their
session-state keys (:mod:`app.common.pickers`). ``app/main.py`` builds the navigation from
:data:`PAGES` and keeps the state of every prefix across pages; each view takes its prefix from here."""
from __future__ import annotations

from typing import NamedTuple


class Page(NamedTuple):
    file: str    # in app/views/; it holds the page as a function, page(), run when Streamlit runs the file
    title: str
    icon: str
    url: str
    prefix: str  # of the page's session-state keys


# in the navigation's order
PAGES = (
    Page("lecture.py", "Lecture", ":material/school:", "lecture", "lec_"),
    Page("attack_lab.py", "Attack Lab", ":material/target:", "attack_lab", "lab_"),
    Page("compare.py", "Compare", ":material/compare:", "compare", "cmp_"),
    Page("channel_stats.py", "Channel statistics", ":material/bar_chart:", "channel_stats", "stats_"),
    Page("robustness.py", "Robustness", ":material/shield:", "robustness", "rob_"),
    Page("train.py", "Train", ":material/model_training:", "train", "train_"),
)
DEFAULT_PAGE = "attack_lab"  # the page the bare address opens
PREFIXES = tuple(p.prefix for p in PAGES)
# session-state key: (model, image index) when the Attack Lab was opened from the Lecture's last step
FROM_LECTURE = "lecture_to_lab"


def prefix(url: str) -> str:
    """The session-state prefix of the page at ``url`` (e.g. ``"lab_"`` for ``"attack_lab"``)."""
    return next(p.prefix for p in PAGES if p.url == url)
