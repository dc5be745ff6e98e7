"""Bundle loading: schema, format version, sha256, path containment, embeddings."""
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the toy bundle's graphs are built with the onnx package")

from omniad_edge.bundle import load_bundle  # noqa: E402
from omniad_edge.errors import BundleError  # noqa: E402
from toy_graphs import make_toy_bundle, write_manifest  # noqa: E402


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def bundle_dir(pristine, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(pristine, target)
    return target


def _edit_manifest(root, edit):
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_loads_and_resolves_paths(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.name == "toy" and bundle.verified
    assert bundle.decoder_path == bundle_dir.resolve() / "decoder.onnx"
    assert bundle.eos_ids == (2,)
    table = bundle.embed_tokens()
    assert table.shape == (32, 8) and table.dtype == np.float32
    assert not table.flags.writeable  # memory-mapped read-only
    assert load_bundle(bundle) is bundle
    assert load_bundle(bundle_dir / "manifest.json").root == bundle.root


def test_sha256_mismatch_is_refused(bundle_dir):
    data = bytearray((bundle_dir / "decoder.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    (bundle_dir / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch for 'decoder.onnx'"):
        load_bundle(bundle_dir)
    # the explicit opt-out skips hashing only
    assert load_bundle(bundle_dir, verify=False).verified is False


def test_size_mismatch_is_refused_even_without_hashing(bundle_dir):
    with open(bundle_dir / "vision.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="vision.onnx.*bytes"):
        load_bundle(bundle_dir, verify=False)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "sub/../../x", "C:\\x.onnx"])
def test_paths_leaving_the_bundle_are_refused(bundle_dir, bad):
    _edit_manifest(bundle_dir, lambda m: m["files"].update({bad: {"sha256": "0" * 64}}))
    with pytest.raises(BundleError, match="leaves the bundle"):
        load_bundle(bundle_dir)


def test_symlink_out_of_the_bundle_is_refused(bundle_dir, tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"secret")
    os.symlink(outside, bundle_dir / "link.bin")
    write_manifest(bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()))
    with pytest.raises(BundleError, match="resolves outside"):
        load_bundle(bundle_dir)


def test_graph_path_not_in_files_is_refused(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["graphs"]["decoder"].update(path="other.onnx"))
    with pytest.raises(BundleError, match="graphs.decoder.path 'other.onnx' is not listed"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
def test_unknown_format_version_is_refused(bundle_dir, version):
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle_dir)


def test_unknown_format_is_refused(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m.update(format="onnx-genai"))
    with pytest.raises(BundleError, match="format is 'onnx-genai'"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("key", ["tokens", "graphs", "model.num_layers", "prompt.template", "embed_tokens.shape"])
def test_missing_required_key_is_named(bundle_dir, key):
    def drop(m):
        section, _, sub = key.partition(".")
        del (m[section] if sub else m)[sub or section]

    _edit_manifest(bundle_dir, drop)
    with pytest.raises(BundleError, match=f"missing required key {key}"):
        load_bundle(bundle_dir)


def test_missing_manifest_file_and_directory(bundle_dir, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    (bundle_dir / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing file 'tokenizer.json'"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match="missing manifest.json"):
        load_bundle(bundle_dir)


def test_corrupt_manifest_json(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)


def test_pickled_embeddings_are_never_loaded(bundle_dir):
    np.save(bundle_dir / "embed_tokens.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    write_manifest(bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()))
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="cannot read embed_tokens.npy"):
        bundle.embed_tokens()


def test_embedding_shape_must_match_manifest(bundle_dir):
    np.save(bundle_dir / "embed_tokens.npy", np.zeros((31, 8), np.float32))
    write_manifest(bundle_dir, json.loads((bundle_dir / "manifest.json").read_text()))
    with pytest.raises(BundleError, match=r"float32\[31, 8\], manifest says float32\[32, 8\]"):
        load_bundle(bundle_dir).embed_tokens()


def test_missing_default_bundle_is_explained(monkeypatch, tmp_path):
    import omniad_edge.bundle as module

    monkeypatch.setattr(module, "DEFAULT_BUNDLE_DIR", tmp_path / "models" / "default")
    with pytest.raises(BundleError, match="no default bundle is installed"):
        load_bundle(None)


def test_wrong_engine_type():
    with pytest.raises(BundleError, match="engine must be"):
        load_bundle(42)
