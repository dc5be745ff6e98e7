"""The source distribution carries everything the native build and the runtime need."""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sdist_holds_the_native_sources_headers_and_the_embedded_model(tmp_path):
    # egg_info in tmp: setuptools would otherwise reuse the SOURCES.txt of an earlier build in the tree
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                    str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = subprocess.run(["git", "ls-files", "cpp_ext", "omniad_edge/models"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    needed = [p for p in tracked if p.startswith("omniad_edge/models/") or p.endswith((".cpp", ".hpp", ".h"))]
    assert any(p.endswith("onnxruntime_c_api.h") for p in needed)
    assert "cpp_ext/third_party/onnxruntime/LICENSE" in names
    missing = sorted(set(needed) - names)
    assert not missing, f"the sdist lacks {missing} (MANIFEST.in)"
