"""Serving: request checks and response forms without Ray, then a real local Ray cluster with two replicas of the
embedded engine answering concurrent clients exactly as a local Inspector does. Ray is required (the README's test
command installs the `serve` extra): a missing Ray fails the test with the extra's name."""
import io
import json
import socket
import struct
import threading
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest
from PIL import Image

from omniad_edge import Inspector
from omniad_edge.frame import to_rgb
from omniad_edge.serve import Client, RequestError, ServeError, decode_request, response, response_mask, start, stop
from omniad_edge.synth import make_sample


def png_header_only(w, h):
    """A PNG that declares w x h pixels and holds none: what a decompression bomb looks like at the door."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def encoded(rgb, fmt):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


BAD_REQUESTS = [
    (b"", 400, "empty request body"),
    (b"\x00garbage" * 50, 400, "not an image format"),
    (png_header_only(8000, 6000), 413, "8000x6000 = 48 MP, above the server's limit of 40 MP"),
    (png_header_only(60000, 60000), 413, "too large to decode safely"),
    (encoded(np.zeros((4, 4, 3), np.uint8), "PNG"), 400, "smaller than the minimum"),
]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS,
                         ids=["empty", "garbage", "48-megapixels", "bomb", "4x4"])
def test_bad_requests_are_refused_with_a_status_and_the_reason(body, status, message):
    with pytest.raises(RequestError, match=message) as exc:
        decode_request(body)
    assert exc.value.status == status


def test_body_size_limit_and_a_good_image():
    rgb = make_sample(1, size=64).image
    with pytest.raises(RequestError, match="above the server's limit of 100") as exc:
        decode_request(encoded(rgb, "PNG"), max_bytes=100)
    assert exc.value.status == 413
    assert np.array_equal(decode_request(encoded(rgb, "PNG")), rgb)


def test_response_carries_the_mask_as_rle_or_png():
    inspector = Inspector(threads=1)
    frame = make_sample(9001, size=(160, 224), anomalous=True).image
    inspection = inspector.run(frame)
    assert inspection.mask.any()  # the round trip below has something to carry
    for form in ("rle", "png"):
        body = response(inspection, form, 3, 12.5)
        assert np.array_equal(response_mask(body), inspection.mask)
        assert body["batch_size"] == 3 and body["timings"]["server"] == 12.5
        assert body["verdict"] == "anomalous" and body["score"] == inspection.score
    assert response_mask(response(inspection, "none", 1, 1.0)) is None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    url = start(replicas=2, port=_free_port(), max_batch_size=4, batch_wait_s=0.02)
    try:
        yield url
    finally:
        stop()


def test_two_replicas_answer_concurrent_clients_like_a_local_inspector(server):
    frames = [make_sample(9100 + i, size=size, anomalous=i % 2 == 0).image
              for i, size in enumerate([224, (168, 280), 224, (252, 196)] * 3)]
    bodies = [encoded(frame, "JPEG" if i % 3 == 2 else "PNG") for i, frame in enumerate(frames)]
    answers, errors = {}, []
    barrier = threading.Barrier(4)

    def client(k):
        connection = Client(server, timeout=60)
        barrier.wait()
        for i in range(k, len(bodies), 4):
            try:
                answers[i] = connection.inspect(bodies[i], mask="png" if i % 2 else "rle")
            except Exception as exc:  # reported below with the frame it belongs to
                errors.append((i, exc))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    local = Inspector(threads=1)
    for i, body in enumerate(bodies):
        want = local.run(to_rgb(body))  # the bytes decoded the way the server decodes them
        got = answers[i]
        assert got["verdict"] == ("anomalous" if want.is_anomalous else "normal"), i
        assert got["score"] == pytest.approx(want.score, abs=1e-4), i
        assert got["boxes"] == [b.to_dict() for b in want.boxes], i
        assert got["defect_type"] == want.defect_type and got["text"] == want.text, i
        assert np.array_equal(response_mask(got), want.mask), i
    assert any(a["verdict"] == "anomalous" for a in answers.values())
    assert any(a["verdict"] == "normal" for a in answers.values())
    assert max(a["batch_size"] for a in answers.values()) > 1  # concurrent requests met in one run_batch


def test_server_refuses_bad_requests_and_keeps_serving(server):
    connection = Client(server, timeout=60)
    for body, status, message in BAD_REQUESTS:
        with pytest.raises(ServeError, match=message) as exc:
            connection.inspect(body)
        assert exc.value.status == status
    with pytest.raises(urllib.error.HTTPError) as exc:  # past the client's own check, straight to the server
        urllib.request.urlopen(urllib.request.Request(f"{server}/?mask=jpeg", data=b"x", method="POST"), timeout=60)
    assert exc.value.code == 400 and "mask must be one of" in json.loads(exc.value.read())["error"]
    assert connection.info()["bundle"] == Inspector(threads=1).bundle.name
    frame = make_sample(9200, size=224).image
    assert connection.inspect(frame)["score"] == pytest.approx(Inspector(threads=1).run(frame).score, abs=1e-4)
