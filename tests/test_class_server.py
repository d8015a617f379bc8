"""A class on the real server: four visitors at once get exactly what each gets alone, on one server and
through a load balancer in front of two servers (sticky sessions, uploads included).

Each visitor, in one session (one websocket, as one browser tab): the lecture's step 6 (the same for
everyone), then the Attack Lab on its own test image (a short PGD), then "Upload a photo" and its own
photo. Asserts correctness, not speed (four server starts and a few short attacks).
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from browser import ARTIFACTS, ROOT, _free_port, _wait_healthy, serve_process
from st_client import StreamlitClient, Visit

pytestmark = pytest.mark.slow

IMAGES = (11, 12, 13, 14)  # one CIFAR-10 test image per visitor
STEPS = 3  # attack steps: few, so that the test is quick
VISIT_TIMEOUT = 300.0
LECTURE = ("lecture", "step=6")
LAB_PAGE = ""  # the Attack Lab: the default page, at the bare address
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BALANCER_CONFIG = ROOT / "deploy" / "haproxy.cfg"
AFFINITY_COOKIE = "CASLAB_SERVER"

# Text that may rightly differ between a visit alone and one among others, and only that: the attack's own
# timing line, and a note on how many other visitors are attacking (for a queue that may show one).
VOLATILE = (re.compile(r"^The attack took \d+(?:\.\d+)? s\.$"),
            re.compile(r"\b\d+ other visitors? (?:is|are) (?:attacking|waiting)\b"))


def lab_query(image: int) -> str:
    return f"model=at-cas&attack=pgd&img={image}&steps={STEPS}"


def photo(k: int) -> bytes:
    """Visitor ``k``'s photo: a 48x40 PNG of its own colours."""
    from PIL import Image

    im = Image.new("RGB", (48, 40), (40 + 50 * k, 200 - 40 * k, 90 + 30 * k))
    for x in range(0, 48, 6):
        for y in range(0, 40, 4):
            im.putpixel((x, y), (255 - 60 * k, 20 * k, 255))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def drawn(visit: Visit) -> tuple[list[str], list]:
    """What a visit drew that must not depend on who else is on the server: every text but the
    :data:`VOLATILE` ones, and every chart's data (the probabilities and channel values)."""
    assert visit.ok, (visit.status, visit.exceptions, visit.page_not_found)
    texts = [t for t in visit.texts if not any(p.search(t) for p in VOLATILE)]
    return texts, [chart.get("data") for chart in visit.charts]


async def one_visitor(url: str, k: int, servers: dict[str, str] | None = None) -> dict:
    """Visitor ``k``'s whole visit in one session; returns its visits, its cookies and (``servers``: name ->
    URL of each server behind a balancer) the names of the servers that hold its session at the end,
    asked while its websocket is still open."""
    async with StreamlitClient(url, timeout=VISIT_TIMEOUT) as c:
        lecture = await c.visit(*LECTURE)
        lab = await c.visit(LAB_PAGE, lab_query(IMAGES[k]))
        await c.set_widget("lab_src", string_value="Upload a photo")
        upload = await c.upload("up_lab_image", f"visitor{k}.png", photo(k), "image/png")
        held = {name for name, u in (servers or {}).items()
                if await asyncio.to_thread(holds_session, u, c.session_id)}
        return {"lecture": lecture, "lab": lab, "upload": upload, "cookies": dict(c.cookies), "held": held,
                "session_id": c.session_id}


async def everyone_at_once(url: str, n: int = len(IMAGES), servers: dict[str, str] | None = None) -> list[dict]:
    return list(await asyncio.gather(*(one_visitor(url, k, servers) for k in range(n))))


async def one_by_one(url: str, n: int = len(IMAGES)) -> list[dict]:
    return [await one_visitor(url, k) for k in range(n)]


def check_same_as_alone(together: list[dict], alone: list[dict]) -> None:
    """Every visitor drew what it draws alone, shows its own image and photo, and nobody else's."""
    for k, (mine, ref) in enumerate(zip(together, alone)):
        for part in ("lecture", "lab", "upload"):
            assert drawn(mine[part]) == drawn(ref[part]), f"visitor {k}: the {part} differs from a visit alone"
        lab_text, upload_text = mine["lab"].text(), mine["upload"].text()
        assert f"test image #{IMAGES[k]} (" in lab_text
        assert f"uploaded photo visitor{k}.png" in upload_text
        for j in range(len(together)):
            if j != k:
                assert f"test image #{IMAGES[j]} (" not in lab_text + upload_text, f"visitor {k} shows {j}'s image"
                assert f"visitor{j}.png" not in lab_text + upload_text, f"visitor {k} shows {j}'s photo"
    # the four results are four different results, so equality above means each got its own
    assert len({tuple(drawn(v["lab"])[0]) for v in alone}) == len(alone)
    assert len({tuple(drawn(v["upload"])[0]) for v in alone}) == len(alone)


@contextlib.contextmanager
def app(env: dict, tmp: Path, name: str, port: int | None = None):
    """One app server; its log is kept in test-artifacts/ as ``name``."""
    log = tmp / name
    try:
        with serve_process(env, log, port=port) as (url, _proc):
            yield url
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        if log.exists():
            shutil.copy(log, ARTIFACTS / name)


@pytest.fixture(scope="module")
def app_env(standin_pretrained, tmp_path_factory) -> dict:
    return {"CAS_PRETRAINED_DIR": str(standin_pretrained), "CAS_RUNS_DIR": str(tmp_path_factory.mktemp("runs"))}


@pytest.fixture(scope="module")
def alone(app_env, tmp_path_factory) -> list[dict]:
    """Each visitor's visit alone, one after the other, on a server of its own."""
    with app(app_env, tmp_path_factory.mktemp("alone"), "class_alone.log") as url:
        return asyncio.run(one_by_one(url))


def test_four_visitors_at_once_see_what_each_sees_alone(app_env, alone, tmp_path):
    with app(app_env, tmp_path, "class_together.log") as url:  # a fresh server: nothing computed yet
        together = asyncio.run(everyone_at_once(url))
    check_same_as_alone(together, alone)


# -- past one server ------------------------------------------------------------------------------------

@contextlib.contextmanager
def balancer(app1: str, app2: str, tmp: Path):
    """HAProxy with deploy/haproxy.cfg in front of ``app1`` and ``app2`` (host:port) on a free local
    port; yields its URL and stops it (by its pid) afterwards. Its log goes to test-artifacts/."""
    port = _free_port()
    log = tmp / "haproxy.log"
    env = {**os.environ, "CAS_LB_BIND": f"127.0.0.1:{port}", "CAS_APP1": app1, "CAS_APP2": app2}
    with open(log, "w") as out:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(BALANCER_CONFIG)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc, log, seconds=30)
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(log, ARTIFACTS / "haproxy.log")


def uploads_by_server(log: Path) -> dict[str, set[str]]:
    """From the balancer's log: session id -> the servers that its uploads went to."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r" cas_servers/(\S+) .*\"PUT /_stcore/upload_file/([^/\s]+)/", log.read_text()):
        out.setdefault(m.group(2), set()).add(m.group(1))
    return out


def holds_session(server: str, session_id: str) -> bool:
    """Whether ``server`` itself holds ``session_id``: its upload endpoint takes a file only for a session
    it holds (and answers 400 for any other). The probe's file is deleted again."""
    probe = StreamlitClient(server, timeout=30)
    status, _ = probe.request("GET", "/_stcore/health")
    assert status == 200
    path = f"/_stcore/upload_file/{session_id}/probe-{uuid.uuid4().hex}"
    status, body = probe.put_file(path, "probe.txt", b"probe", "text/plain")
    if status == 204:
        probe.request("DELETE", path, headers={"X-Xsrftoken": probe.cookies["_streamlit_xsrf"]})
        return True
    assert status == 400 and b"Invalid session_id" in body, (status, body[:200])
    return False


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason="HAProxy is not installed (scripts/setup.sh --browser installs it)")
def test_balancer_keeps_each_visitor_on_one_server(app_env, alone, tmp_path):
    ports = (_free_port(), _free_port())
    with app(app_env, tmp_path, "class_app1.log", ports[0]) as url1, \
            app(app_env, tmp_path, "class_app2.log", ports[1]) as url2, \
            balancer(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", tmp_path) as front:
        servers = {"app1": url1, "app2": url2}
        together = asyncio.run(everyone_at_once(front, servers=servers))
    uploads = uploads_by_server(tmp_path / "haproxy.log")
    where = {}
    for k, v in enumerate(together):
        name = v["cookies"].get(AFFINITY_COOKIE)
        assert name in servers, f"visitor {k} got no affinity cookie: {v['cookies']}"
        # the session (its websocket) lives on the server the cookie names, and only there; its upload went
        # there too (the balancer's log says so, the server took it: a server takes an upload only for a
        # session it holds, and the photo's result was drawn, see check_same_as_alone)
        assert v["held"] == {name}, f"visitor {k}: cookie says {name}, session held by {v['held'] or 'no server'}"
        assert uploads[v["session_id"]] == {name}, f"visitor {k}'s upload went to {uploads[v['session_id']]}"
        where[k] = name
    assert set(where.values()) == set(servers), f"one server got every visitor: {where}"
    check_same_as_alone(together, alone)
