"""Join the class: the link and QR code that presentation mode shows (app/common/join.py)."""
from __future__ import annotations

import io

import pytest
import zxingcpp
from PIL import Image

from app.common.join import OPEN_COMMAND, is_loopback, join_link, qr_png


@pytest.mark.parametrize("host,loop", [("localhost", True), ("127.0.0.1", True), ("127.3.2.1", True), ("[::1]", True),
                                       ("10.0.0.5", False), ("cas-lab.example", False), ("::ffff:10.1.1.1", False)])
def test_loopback(host, loop):
    assert is_loopback(host) is loop


def test_the_teachers_network_address_is_kept():
    link = join_link("http://10.0.0.5:8501/lecture?step=2", "lecture", {"step": "3", "present": "1"},
                     server_address="0.0.0.0", network_ip="192.168.1.9")
    assert link.url == "http://10.0.0.5:8501/lecture?step=3&present=1"


def test_a_teacher_on_localhost_gets_the_machines_network_address():
    link = join_link("http://localhost:8501/lecture", "lecture", {"step": "6"}, server_address="0.0.0.0",
                     network_ip="192.168.1.9")
    assert link.url == "http://192.168.1.9:8501/lecture?step=6"
    link = join_link("http://127.0.0.1:9000/", "lecture", {}, server_address="192.168.1.20", network_ip="10.9.9.9")
    assert link.url == "http://192.168.1.20:9000/lecture?"[:-1]


def test_a_server_for_this_machine_only_says_how_to_open_it():
    link = join_link("http://localhost:8501/lecture", "lecture", {"step": "1"}, server_address="localhost",
                     network_ip="192.168.1.9")
    assert link.url is None and OPEN_COMMAND in link.note
    assert join_link(None, "lecture", {}, server_address="0.0.0.0", network_ip="").url is None


def test_the_qr_code_reads_back_as_the_link():
    url = "http://192.168.1.9:8501/lecture?step=6&present=1"
    image = Image.open(io.BytesIO(qr_png(url)))
    assert [r.text for r in zxingcpp.read_barcodes(image)] == [url]
