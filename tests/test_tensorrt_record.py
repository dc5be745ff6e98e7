"""The build record (pure, every machine): written by the build, checked against the running device."""
from __future__ import annotations

import json

import pytest

from helpers.tensorrt_cases import H100, ORIN
from omniad_edge.errors import BackendError
from omniad_edge.tensorrt import record as rec
from omniad_edge.tensorrt.cuda import DeviceInfo
from omniad_edge.tensorrt.limits import BuildOptions, Limits


# -- build record -----------------------------------------------------------------------------------------------

def _record(**changes):
    limits = Limits(batch=1, max_image_tokens=64, max_images=1, max_seq_len=512, max_prefill=512)
    record = rec.make_record(trt_version="10.3.0", device=ORIN, opts=BuildOptions(fp16=True), limits=limits,
                            manifest_sha="abc", bundle_name="b", profiles={}, precision={"strongly_typed": False},
                            engines={"vision": {"path": "vision.engine"}, "decoder": {"path": "decoder.engine"}},
                            build_seconds=12.34)
    record = json.loads(json.dumps(record))  # as read back from disk
    record.update(changes)
    return record


def test_record_matches_its_device():
    record = _record()
    assert record["device"]["compute_capability"] == [8, 7] and record["flags"]["fp16"] is True
    assert rec.record_limits(record) == Limits(batch=1, max_image_tokens=64, max_images=1, max_seq_len=512,
                                              max_prefill=512)
    rec.check_record(record, trt_version="10.3.0", device=ORIN, manifest_sha="abc")


@pytest.mark.parametrize("kwargs, match", [
    ({"trt_version": "10.4.0"}, "TensorRT 10.3.0.*TensorRT 10.4.0"),
    ({"device": H100}, "built for Orin.*NVIDIA H100"),
    ({"device": DeviceInfo("Orin", (8, 6), 1, 1)}, "compute capability 8.6"),
    ({"manifest_sha": "def"}, "another version of this bundle"),
])


def test_record_mismatch_says_rebuild(kwargs, match):
    args = {"trt_version": "10.3.0", "device": ORIN, "manifest_sha": "abc", **kwargs}
    with pytest.raises(BackendError, match=match) as info:
        rec.check_record(_record(), root="/b", **args)
    assert "omniad-edge build-engine /b" in str(info.value)


def test_record_format_checked(tmp_path):
    for bad in (_record(format="other"), _record(format_version=2), _record(engines={"vision": {}})):
        with pytest.raises(BackendError, match="rebuild"):
            rec.check_record(bad, trt_version="10.3.0", device=ORIN, manifest_sha="abc")
    with pytest.raises(BackendError, match="build-engine"):
        rec.read_record(tmp_path)
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "build.json").write_text("{not json")
    with pytest.raises(BackendError, match="not valid JSON"):
        rec.read_record(tmp_path)
