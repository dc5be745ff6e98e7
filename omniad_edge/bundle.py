"""Engine bundle loader: the manifest schema, format version, sha256 and path containment (docs/DESIGN.md).

Nothing in a bundle is executed or unpickled. Every file the runtime touches must be listed in the manifest's
`files` table with its sha256 and size; paths are relative and must stay inside the bundle directory, symlinks
included.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .contract import BUNDLE_FORMAT as FORMAT
from .contract import KV_LAYOUTS, MANIFEST, MANIFEST_KEYS, TARGETS, bundle_target, decoder_kv_layout
from .errors import BundleError

FORMAT_VERSIONS = (1,)
DEFAULT_BUNDLE_DIR = Path(__file__).resolve().parent / "models" / "default"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    """A checked engine bundle: the manifest as plain dicts plus resolved, verified file paths."""

    root: Path
    manifest: dict[str, Any]
    verified: bool = True
    _embed_cache: dict = field(default_factory=dict, repr=False, compare=False)

    # Manifest sections, read-only views for callers.
    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def tokens(self) -> dict:
        return self.manifest["tokens"]

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def prompt(self) -> dict:
        return self.manifest["prompt"]

    @property
    def output(self) -> dict:
        return self.manifest["output"]

    @property
    def graphs(self) -> dict:
        return self.manifest["graphs"]

    @property
    def eos_ids(self) -> tuple[int, ...]:
        eos = self.tokens["eos"]
        return tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))

    def path(self, relative: str) -> Path:
        """Absolute path of a file listed in the manifest (checked at load)."""
        if relative not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root}: {relative!r} is not listed in manifest 'files'")
        return self.root / relative

    @property
    def vision_path(self) -> Path:
        return self.path(self.graphs["vision"]["path"])

    @property
    def decoder_path(self) -> Path:
        return self.path(self.graphs["decoder"]["path"])

    @property
    def refine(self) -> dict | None:
        """graphs.refine (the optional mask refinement graph, omniad_edge/refine.py), or None."""
        return self.graphs.get("refine")

    @property
    def tokenizer_path(self) -> Path:
        return self.path(self.manifest["tokenizer"]["path"])

    def embed_tokens(self) -> np.ndarray:
        """The token embedding table, memory-mapped (read-only) so a 150k-row table costs only the rows used."""
        if "table" not in self._embed_cache:
            spec = self.manifest["embed_tokens"]
            file = self.path(spec["path"])
            try:
                table = np.load(file, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise BundleError(f"bundle {self.root}: cannot read {spec['path']}: {exc}") from None
            if list(table.shape) != list(spec["shape"]) or str(table.dtype) != spec["dtype"]:
                raise BundleError(
                    f"bundle {self.root}: {spec['path']} is {table.dtype}{list(table.shape)}, "
                    f"manifest says {spec['dtype']}{list(spec['shape'])}"
                )
            self._embed_cache["table"] = table
        return self._embed_cache["table"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _contained(root: Path, relative: str, what: str) -> Path:
    """Resolve `relative` under `root`; refuse absolute paths, `..`, backslashes and symlinks that leave root."""
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"bundle {root}: {what} must be a non-empty relative path, got {relative!r}")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or "\\" in relative or ":" in relative or ".." in pure.parts:
        raise BundleError(f"bundle {root}: {what} {relative!r} leaves the bundle directory")
    resolved = (root / relative).resolve()
    if not resolved.is_relative_to(root):
        raise BundleError(f"bundle {root}: {what} {relative!r} resolves outside the bundle directory ({resolved})")
    return resolved


def _check_schema(root: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {root}: {MANIFEST} must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {root}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if version not in FORMAT_VERSIONS or isinstance(version, bool):
        raise BundleError(
            f"bundle {root}: format_version {version!r} is not supported by this runtime "
            f"(supported: {list(FORMAT_VERSIONS)}); upgrade omniad-edge or re-export the bundle"
        )
    for key, subkeys in MANIFEST_KEYS.items():
        if key not in manifest:
            raise BundleError(f"bundle {root}: manifest is missing required key {key}")
        if subkeys:
            section = manifest[key]
            if not isinstance(section, dict):
                raise BundleError(f"bundle {root}: manifest key {key!r} must be an object")
            for sub in subkeys:
                if sub not in section:
                    raise BundleError(f"bundle {root}: manifest is missing required key {key}.{sub}")
    if not isinstance(manifest["files"], dict) or not manifest["files"]:
        raise BundleError(f"bundle {root}: manifest 'files' must be a non-empty object")
    for graph in ("vision", "decoder"):
        if not isinstance(manifest["graphs"][graph], dict) or "path" not in manifest["graphs"][graph]:
            raise BundleError(f"bundle {root}: manifest is missing required key graphs.{graph}.path")
    layout = decoder_kv_layout(manifest)
    if layout not in KV_LAYOUTS:
        raise BundleError(f"bundle {root}: graphs.decoder.kv_layout {layout!r} is not supported (expected one of "
                          f"{list(KV_LAYOUTS)})")
    target = bundle_target(manifest)
    if target is not None and target not in TARGETS:
        raise BundleError(f"bundle {root}: target {target!r} is not supported (expected one of {list(TARGETS)})")


def load_bundle(path: str | Path | Bundle | None = None, *, verify: bool = True) -> Bundle:
    """Load and check an engine bundle directory (or its manifest.json).

    path=None loads the embedded default bundle. verify=False skips the sha256 pass (sizes, containment and the
    schema are still checked); use it only for bundles you verified yourself, e.g. on every boot of a read-only
    image.
    """
    if isinstance(path, Bundle):
        return path
    if path is None:
        if not (DEFAULT_BUNDLE_DIR / MANIFEST).is_file():
            raise BundleError(
                f"no default bundle is installed at {DEFAULT_BUNDLE_DIR}; pass engine=<bundle directory> "
                "(export one with `omniad-edge export`)"
            )
        path = DEFAULT_BUNDLE_DIR
    if not isinstance(path, (str, Path)):
        raise BundleError(f"engine must be a bundle directory path or a Bundle, got {type(path).__name__}")
    root = Path(path).expanduser()
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    if not root.is_dir():
        raise BundleError(f"bundle directory {root} does not exist")
    root = root.resolve()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {root}: missing {MANIFEST}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST} is not valid JSON: {exc}") from None
    _check_schema(root, manifest)

    files = manifest["files"]
    for relative, entry in files.items():
        file = _contained(root, relative, "file")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"bundle {root}: files[{relative!r}] needs a 'sha256' string")
        if not file.is_file():
            raise BundleError(f"bundle {root}: missing file {relative!r} listed in the manifest")
        if "bytes" in entry and file.stat().st_size != entry["bytes"]:
            raise BundleError(
                f"bundle {root}: {relative!r} has {file.stat().st_size} bytes, manifest says {entry['bytes']}"
            )
        if verify and sha256_file(file) != entry["sha256"].lower():
            raise BundleError(f"bundle {root}: sha256 mismatch for {relative!r} (corrupt or tampered file)")

    referenced = {
        "graphs.vision.path": manifest["graphs"]["vision"]["path"],
        "graphs.decoder.path": manifest["graphs"]["decoder"]["path"],
        "embed_tokens.path": manifest["embed_tokens"]["path"],
        "tokenizer.path": manifest["tokenizer"]["path"],
    }
    refine = manifest["graphs"].get("refine")
    if refine is not None:
        if not isinstance(refine, dict) or not isinstance(refine.get("path"), str):
            raise BundleError(f"bundle {root}: graphs.refine must be an object with a 'path'")
        for key, low, high in (("size", 4, 4096), ("dilate", 0, 16)):
            value = refine.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise BundleError(f"bundle {root}: graphs.refine.{key} must be an int in {low}..{high}, "
                                  f"got {value!r}")
        referenced["graphs.refine.path"] = refine["path"]
    for what, relative in referenced.items():
        _contained(root, relative, what)
        if relative not in files:
            raise BundleError(f"bundle {root}: {what} {relative!r} is not listed in manifest 'files' (no sha256)")
    return Bundle(root=root, manifest=manifest, verified=verify)
