#!/usr/bin/env python3
"""Package the release .wasm as an OCI image layout that Istio's WasmPlugin can pull.

Usage: build_oci.py WASM LAYOUT_DIR TARBALL TAG

The image follows the Wasm OCI artifact format Istio reads (the "oci" variant of
solo-io/wasm's spec, as produced by `wasme push`, read by istio/istio pkg/wasm
imagefetcher.go extractOCIArtifactImage): an OCI image manifest whose config is the
runtime config (application/vnd.module.wasm.config.v1+json) and whose two layers are
that same config and the module itself (application/vnd.module.wasm.content.layer.v1+wasm,
the raw .wasm, uncompressed). Istio requires exactly these two layers and takes the one
with the wasm media type.

Python standard library only, no container engine. Reproducible: the same .wasm gives
byte-identical blobs, layout and tarball (canonical JSON, sorted tar entries, zero
mtimes and owners), so the manifest digest only changes when the module does.
"""
import hashlib
import io
import json
import shutil
import sys
import tarfile
from pathlib import Path

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE = "org.opencontainers.image.title"
# The proxy-wasm root id (pluginName in istio/wasmplugin.yaml, root_id in envoy.yaml) and
# the ABI the module exports (proxy-wasm Rust SDK 0.2.x: proxy_abi_version_0_2_1).
ROOT_ID = "nebula-authz"
ABI_VERSION = "proxy_abi_version_0_2_1"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type, blob, title=None):
    desc = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    if title:
        desc["annotations"] = {TITLE: title}
    return desc


def build(wasm, tag):
    """Returns {relative path: bytes} of the whole layout."""
    config = canonical_json({"type": "envoy_proxy", "abiVersions": [ABI_VERSION], "config": {"rootIds": [ROOT_ID]}})
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, config),
            "layers": [
                descriptor(CONFIG_TYPE, config, "runtime-config.json"),
                descriptor(WASM_TYPE, wasm, "plugin.wasm"),
            ],
            "annotations": {"module.wasm.runtime/type": "envoy_proxy", "module.wasm.runtime/abi_version": ABI_VERSION},
        }
    )
    manifest_desc = descriptor(MANIFEST_TYPE, manifest)
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = canonical_json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [manifest_desc]})
    files = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    for blob in (config, wasm, manifest):
        files[f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}"] = blob
    return files


def tarball(files):
    """The layout as a tar (what `skopeo copy oci-archive:` reads), byte-reproducible."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(files[name]), 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return out.getvalue()


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    wasm_path, layout, tar_path, tag = Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4]
    if not wasm_path.is_file():
        print(f"error: {wasm_path} not found: run `make build` first", file=sys.stderr)
        return 1
    files = build(wasm_path.read_bytes(), tag)
    shutil.rmtree(layout, ignore_errors=True)
    for name, blob in files.items():
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(blob)
    tar_path.write_bytes(tarball(files))
    manifest = json.loads(files["index.json"])["manifests"][0]
    print(f"{layout}/ and {tar_path}: {manifest['digest']} (tag {tag})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
