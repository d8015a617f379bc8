"""A headless Streamlit client: one browser tab's websocket, without the browser.

It speaks Streamlit's own protocol (``BackMsg`` / ``ForwardMsg`` protobufs over
``ws://HOST:PORT/_stcore/stream``, subprotocol ``streamlit``) to a running server, so that tests and load
benchmarks can drive many sessions at once at little cost::

    async with StreamlitClient("http://127.0.0.1:8501") as c:
        visit = await c.visit("attack_lab", "model=at-cas&img=3&steps=5")
        print(visit.seconds, visit.texts)
        visit = await c.click("btn_lab_random")            # a button, by its key
        visit = await c.set_widget("lab_idx", int_value=7)  # a widget's new value, by its key
        visit = await c.upload("up_lab_image", "cat.png", png_bytes, "image/png")

A *visit* is one script run: the client sends ``rerun_script`` and collects what the server draws until
``script_finished``. Elements are kept by their place on the page (a later delta at the same place
replaces the earlier one, as in a browser), so a visit's texts are what the page finally shows.

Only what a load test needs is implemented: page and query string, button clicks, single-value widgets,
file uploads (``st.file_uploader``), cookies (a load balancer's affinity cookie and Streamlit's XSRF
cookie, taken from an HTTP request to the same address before the websocket opens).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urljoin, urlsplit

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import FileURLsRequest, UploadedFileInfo
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.asyncio.client import connect

XSRF_COOKIE = "_streamlit_xsrf"
# ScriptFinishedStatus values that end a visit (a run cut short by st.rerun() is followed by another run)
_RERUN_EARLY = ForwardMsg.ScriptFinishedStatus.FINISHED_EARLY_FOR_RERUN


class VisitTimeout(TimeoutError):
    """The server did not finish the run within the visit's timeout."""


@dataclass
class Visit:
    """What one script run drew: ``texts`` in page order (markdown, captions, headings, alerts, plain
    text, metrics, code, progress text), ``charts`` (each Plotly figure's JSON), ``exceptions``
    (``"Type: message"``), ``page_not_found`` (the page name the server did not know), the finish
    ``status`` (a ``ScriptFinishedStatus`` name), ``deltas`` (how many arrived) and ``seconds`` (from the
    send to ``script_finished``)."""

    texts: list[str] = field(default_factory=list)
    charts: list[dict] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    page_not_found: str | None = None
    status: str = ""
    deltas: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "FINISHED_SUCCESSFULLY" and not self.exceptions and self.page_not_found is None

    def text(self) -> str:
        return "\n".join(self.texts)


def element_text(element) -> str | None:
    """The text a reader sees in one drawn element, or None for elements without text of their own."""
    kind = element.WhichOneof("type")
    e = getattr(element, kind) if kind else None
    if kind in ("markdown", "text", "heading", "alert"):
        return e.body
    if kind == "metric":
        return " ".join(t for t in (e.label, e.body, e.delta) if t)
    if kind == "code":
        return e.code_text
    if kind == "progress":
        return e.text or None
    if kind == "exception":
        return f"{e.type}: {e.message}"
    return None


def _widget(element) -> tuple[str, str] | None:
    """(id, label) of a widget element, None for other elements."""
    kind = element.WhichOneof("type")
    e = getattr(element, kind) if kind else None
    wid = getattr(e, "id", None) if e is not None else None
    return (wid, getattr(e, "label", "")) if wid else None


class StreamlitClient:
    """One session on a Streamlit server. Use it as an async context manager, or call
    :meth:`connect` and :meth:`close`."""

    def __init__(self, base_url: str, timeout: float = 120.0, cookies: dict[str, str] | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.cookies: dict[str, str] = dict(cookies or {})
        self.session_id: str | None = None
        self.page_script_hash = ""
        self.page_name = ""
        self.query_string = ""
        self.widgets: dict[str, tuple[str, str]] = {}  # widget id -> (element kind, label), last visit
        self._ws = None
        self._inbox: asyncio.Queue[ForwardMsg] = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self._file_urls: dict[str, asyncio.Future] = {}

    # -- connection ------------------------------------------------------------------------------------

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float | None = None) -> tuple[int, bytes]:
        """A blocking HTTP request to this client's server, with its cookies; keeps the cookies the
        answer sets. Returns (status, body)."""
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        req = urllib.request.Request(urljoin(self.base_url + "/", path.lstrip("/")), data=body,
                                     headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                status, data, set_cookies = r.status, r.read(), r.headers.get_all("Set-Cookie") or []
        except urllib.error.HTTPError as e:
            status, data, set_cookies = e.code, e.read(), e.headers.get_all("Set-Cookie") or []
        for line in set_cookies:
            for name, morsel in SimpleCookie(line).items():
                self.cookies[name] = morsel.value
        return status, data

    async def connect(self) -> None:
        """Fetch the cookies the server (or a balancer in front of it) hands out, then open the
        websocket with them, as a browser does after loading the page."""
        status, _ = await asyncio.to_thread(self.request, "GET", "/_stcore/health")
        if status != 200:
            raise ConnectionError(f"{self.base_url}/_stcore/health answered {status}")
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        self._ws = await connect(f"{scheme}://{parts.netloc}{parts.path}/_stcore/stream",
                                 subprotocols=["streamlit"], additional_headers=headers, max_size=None,
                                 open_timeout=self.timeout, ping_interval=None)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # closing anyway
                await self._reader
            self._reader = None

    async def _read(self) -> None:
        async for raw in self._ws:
            if isinstance(raw, str):
                continue
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            if msg.WhichOneof("type") == "file_urls_response":
                fut = self._file_urls.pop(msg.file_urls_response.response_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg.file_urls_response)
                continue
            await self._inbox.put(msg)

    async def _send(self, back: BackMsg) -> None:
        await self._ws.send(back.SerializeToString())

    # -- runs ------------------------------------------------------------------------------------------

    async def visit(self, page_name: str = "", query_string: str = "", timeout: float | None = None) -> Visit:
        """Open ``page_name`` (its url path; "" for the default page) with ``query_string`` (no "?"), as
        typing the address does, and wait for the run to end."""
        self.page_name, self.query_string, self.page_script_hash = page_name, query_string, ""
        return await self.rerun(timeout=timeout)

    async def rerun(self, widget_states: list[WidgetState] = (), timeout: float | None = None) -> Visit:
        """Run the current page again with ``widget_states`` (the widgets the user changed)."""
        back = BackMsg()
        cs = back.rerun_script
        cs.query_string = self.query_string
        cs.page_name = self.page_name
        cs.page_script_hash = self.page_script_hash
        cs.widget_states.widgets.extend(widget_states)
        return await self._run(back, timeout or self.timeout)

    async def _run(self, back: BackMsg, timeout: float) -> Visit:
        while not self._inbox.empty():  # anything left from an earlier run is not this visit's
            self._inbox.get_nowait()
        t0 = time.perf_counter()
        await self._send(back)
        deadline = t0 + timeout
        drawn: dict[tuple, object] = {}
        visit = Visit()
        widgets: dict[str, tuple[str, str]] = {}
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise VisitTimeout(f"no script_finished within {timeout:.0f} s")
            try:
                msg = await asyncio.wait_for(self._inbox.get(), left)
            except asyncio.TimeoutError:
                raise VisitTimeout(f"no script_finished within {timeout:.0f} s") from None
            kind = msg.WhichOneof("type")
            if kind == "new_session":
                ns = msg.new_session
                self.session_id = ns.initialize.session_id or self.session_id
                drawn.clear()
                widgets.clear()
            elif kind == "delta":
                visit.deltas += 1
                if msg.delta.WhichOneof("type") == "new_element":
                    drawn[tuple(msg.metadata.delta_path)] = msg.delta.new_element
            elif kind == "navigation":  # the page st.navigation runs: what the next rerun names
                self.page_script_hash = msg.navigation.page_script_hash or self.page_script_hash
            elif kind == "page_info_changed":
                self.query_string = msg.page_info_changed.query_string
            elif kind == "page_not_found":
                visit.page_not_found = msg.page_not_found.page_name or self.page_name
            elif kind == "script_finished":
                status = msg.script_finished
                if status == _RERUN_EARLY:
                    continue
                visit.status = ForwardMsg.ScriptFinishedStatus.Name(status)
                break
        visit.seconds = time.perf_counter() - t0
        for path in sorted(drawn):
            el = drawn[path]
            kind = el.WhichOneof("type")
            if kind == "plotly_chart" and el.plotly_chart.spec:
                visit.charts.append(json.loads(el.plotly_chart.spec))
            if kind == "exception":
                visit.exceptions.append(element_text(el))
            text = element_text(el)
            if text:
                visit.texts.append(text)
            widget = _widget(el)
            if widget:
                widgets[widget[0]] = (kind, widget[1])
        self.widgets = widgets
        return visit

    # -- widgets ---------------------------------------------------------------------------------------

    def widget_id(self, key: str | None = None, label: str | None = None) -> str:
        """The id of the widget created with ``key=key`` (or, for one without a key, labelled ``label``)
        in the last visit."""
        if key is not None:
            found = [w for w in self.widgets if w == key or w.endswith("-" + key)]
        else:
            found = [w for w, (_, text) in self.widgets.items() if text == label]
        if len(found) != 1:
            raise KeyError(f"no single widget with key {key!r} / label {label!r} on the page "
                           f"(widgets: {sorted(self.widgets)})")
        return found[0]

    async def click(self, key: str | None = None, label: str | None = None, timeout: float | None = None) -> Visit:
        """Press the button (or form submit button) created with ``key=key``, or labelled ``label``."""
        return await self.rerun([WidgetState(id=self.widget_id(key, label), trigger_value=True)], timeout)

    async def set_widget(self, key: str, timeout: float | None = None, **value) -> Visit:
        """Give the widget created with ``key=key`` a new value, as one field of Streamlit's
        ``WidgetState`` (``int_value=7``, ``double_value=0.5``, ``string_value="x"``, ``bool_value=True``)."""
        return await self.rerun([WidgetState(id=self.widget_id(key), **value)], timeout)

    async def upload(self, key: str, name: str, data: bytes, mime: str = "application/octet-stream",
                     timeout: float | None = None) -> Visit:
        """Give the file uploader created with ``key=key`` one file, as the browser does: ask the server
        for an upload URL (``file_urls_request``), send the file there (an HTTP ``PUT`` with the XSRF
        token and this client's cookies), then rerun with the uploader's new state."""
        wid = self.widget_id(key)
        request_id = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self._file_urls[request_id] = fut
        back = BackMsg()
        back.file_urls_request.CopyFrom(FileURLsRequest(request_id=request_id, file_names=[name],
                                                        session_id=self.session_id or ""))
        await self._send(back)
        response = await asyncio.wait_for(fut, timeout or self.timeout)
        if response.error_msg:
            raise RuntimeError(f"the server refused an upload URL: {response.error_msg}")
        urls = response.file_urls[0]
        status, body = await asyncio.to_thread(self.put_file, urls.upload_url, name, data, mime)
        if status not in (200, 204):
            raise RuntimeError(f"upload answered {status}: {body[:300]!r}")
        state = WidgetState(id=wid)
        state.file_uploader_state_value.uploaded_file_info.append(
            UploadedFileInfo(name=name, size=len(data), file_id=urls.file_id, file_urls=urls))
        return await self.rerun([state], timeout)

    def put_file(self, url: str, name: str, data: bytes, mime: str) -> tuple[int, bytes]:
        """PUT one file as multipart form data to ``url`` (a path on this client's server), with the
        XSRF header Streamlit expects. Returns (status, body)."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if XSRF_COOKIE in self.cookies:
            headers["X-Xsrftoken"] = self.cookies[XSRF_COOKIE]
        path = urlsplit(url).path if "://" in url else url
        return self.request("PUT", path, body, headers)
