#!/usr/bin/env python3
"""Verify the OCI image layout `make oci` wrote, the way a registry client would read it.

Usage: check_oci.py WASM LAYOUT_DIR TARBALL TAG

Checks, reading only what is on disk (not the builder's code): oci-layout; index.json
names TAG; every descriptor's digest and size match its blob; media types are the ones
Istio's puller accepts (an OCI manifest with exactly two layers, one the wasm module and
one the runtime config); the wasm layer is byte-identical to WASM; no stray blobs; the
tarball holds exactly the same files and bytes, with reproducible metadata; and the tag
is the one istio/kustomization.yaml deploys.
"""
import hashlib
import json
import re
import sys
import tarfile
from pathlib import Path

import build_oci  # scripts/: only to rebuild for the reproducibility check

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"


class Checker:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {what}")
        else:
            self.failed += 1
            print(f"FAIL {what}{': ' + detail if detail else ''}")
        return ok


def read_blob(files, desc, c, what):
    """The blob a descriptor names, if its digest and size match."""
    digest = str(desc.get("digest", ""))
    match = re.fullmatch(r"sha256:([0-9a-f]{64})", digest)
    if not c.check(match is not None, f"{what}: digest is sha256", digest):
        return None
    blob = files.get(f"blobs/sha256/{match.group(1)}")
    if not c.check(blob is not None, f"{what}: blob exists", digest):
        return None
    c.check(hashlib.sha256(blob).hexdigest() == match.group(1), f"{what}: blob content hashes to its digest")
    c.check(desc.get("size") == len(blob), f"{what}: size {desc.get('size')} is the blob's", f"blob is {len(blob)} bytes")
    return blob


def verify(files, wasm, tag, label, c):
    used = {"oci-layout", "index.json"}
    layout = json.loads(files.get("oci-layout", b"{}"))
    c.check(layout.get("imageLayoutVersion") == "1.0.0", f"{label}: oci-layout is version 1.0.0")
    index = json.loads(files.get("index.json", b"{}"))
    c.check(index.get("schemaVersion") == 2, f"{label}: index.json schemaVersion 2")
    manifests = index.get("manifests") or []
    tagged = [m for m in manifests if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == tag]
    if not c.check(len(manifests) == 1 and len(tagged) == 1, f"{label}: index.json has one manifest, tagged {tag}"):
        return
    desc = tagged[0]
    c.check(desc.get("mediaType") == MANIFEST_TYPE, f"{label}: index entry is an OCI image manifest")
    blob = read_blob(files, desc, c, f"{label}: manifest")
    if blob is None:
        return
    used.add(f"blobs/sha256/{desc['digest'][7:]}")
    manifest = json.loads(blob)
    c.check(manifest.get("schemaVersion") == 2 and manifest.get("mediaType") == MANIFEST_TYPE,
            f"{label}: manifest schemaVersion 2, mediaType {MANIFEST_TYPE}")
    config_desc = manifest.get("config") or {}
    c.check(config_desc.get("mediaType") == CONFIG_TYPE, f"{label}: config mediaType {CONFIG_TYPE}")
    config = read_blob(files, config_desc, c, f"{label}: config")
    if config is not None:
        used.add(f"blobs/sha256/{config_desc['digest'][7:]}")
        runtime = json.loads(config)
        c.check(runtime.get("type") == "envoy_proxy" and "nebula-authz" in runtime.get("config", {}).get("rootIds", []),
                f"{label}: runtime config is envoy_proxy with root id nebula-authz", str(runtime))
    layers = manifest.get("layers") or []
    types = sorted(layer.get("mediaType") for layer in layers)
    c.check(types == sorted([CONFIG_TYPE, WASM_TYPE]), f"{label}: exactly two layers, config and wasm (Istio's rule)",
            str(types))
    for i, layer in enumerate(layers):
        content = read_blob(files, layer, c, f"{label}: layers[{i}] {layer.get('mediaType')}")
        if content is not None:
            used.add(f"blobs/sha256/{layer['digest'][7:]}")
            if layer.get("mediaType") == WASM_TYPE:
                c.check(content == wasm, f"{label}: the wasm layer is byte-identical to the build's .wasm")
                c.check(content[:4] == b"\0asm", f"{label}: the wasm layer is a wasm module (magic \\0asm)")
    c.check(set(files) == used, f"{label}: no stray files or blobs", str(sorted(set(files) - used)))


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    wasm_path, layout, tar_path, tag = Path(argv[1]), Path(argv[2]), Path(argv[3]), argv[4]
    c = Checker()
    missing = [str(p) for p in (wasm_path, layout / "index.json", tar_path) if not p.exists()]
    if not c.check(not missing, "the build, the layout and the tarball exist", f"missing {missing}: run `make oci`"):
        return 1
    wasm = wasm_path.read_bytes()
    dir_files = {p.relative_to(layout).as_posix(): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()}
    verify(dir_files, wasm, tag, "layout", c)

    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        tar_files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
        c.check(all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname and not m.gname for m in members),
                "tarball: zero mtimes and owners (reproducible)")
        c.check([m.name for m in members if m.isfile()] == sorted(tar_files), "tarball: entries sorted")
        c.check(all(not m.name.startswith(("/", "..")) and ".." not in m.name.split("/") for m in members),
                "tarball: relative paths only")
    c.check(tar_files == dir_files, "tarball: same files and bytes as the layout directory")
    verify(tar_files, wasm, tag, "tarball", c)

    # Reproducible: building again from the same .wasm gives the same tarball, byte for byte.
    c.check(build_oci.tarball(build_oci.build(wasm, tag)) == tar_path.read_bytes(),
            "a rebuild from the same .wasm is byte-identical")

    kust = (ROOT / "istio" / "kustomization.yaml").read_text()
    deployed = re.search(r"url=oci://\S+:(\S+)", kust)
    c.check(deployed is not None and deployed.group(1) == tag, f"istio/kustomization.yaml deploys tag {tag}",
            deployed.group(1) if deployed else "no url=oci://...:TAG literal")
    print(f"oci: {c.passed} passed, {c.failed} failed")
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
