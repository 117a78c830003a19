#!/usr/bin/env python3
"""Validate the manifests under istio/ against Istio's CRD schemas, without a cluster.

Each YAML document's apiVersion and kind pick a served CRD version from
third_party/istio/; the document is checked against that version's openAPIV3Schema
with a JSON Schema validator (draft 4, which OpenAPI 3.0 schemas follow), and each
WasmPlugin's pluginConfig is loaded through the filter's own config parser
(tests/src/bin/check-config.rs). The Kubernetes-only parts of those schemas
(x-kubernetes-*, including CEL rules) are not evaluated: an API server would also
check those.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from jsonschema import Draft4Validator

ROOT = Path(__file__).resolve().parent.parent


def load_schemas(crd_dir):
    schemas = {}
    for path in sorted(crd_dir.glob("*.crd.yaml")):
        crd = yaml.safe_load(path.read_text())["spec"]
        for version in crd["versions"]:
            if version.get("served"):
                key = (f"{crd['group']}/{version['name']}", crd["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def problems(doc, schemas):
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in schemas:
        return [f"no served CRD for apiVersion={key[0]!r} kind={key[1]!r}"]
    found = []
    if not (doc.get("metadata") or {}).get("name"):
        found.append("metadata.name is missing")
    for error in sorted(Draft4Validator(schemas[key]).iter_errors(doc), key=str):
        where = ".".join(str(p) for p in error.absolute_path) or "(document)"
        found.append(f"{where}: {error.message}")
    return found


def plugin_config_problems(doc):
    """A WasmPlugin's pluginConfig must load through the filter's own config parser."""
    if doc.get("kind") != "WasmPlugin":
        return []
    config = (doc.get("spec") or {}).get("pluginConfig")
    if config is None:
        return ["spec.pluginConfig is missing: the filter needs at least auth.cluster or auth.host"]
    checker = os.environ.get("NEBULA_CHECK_CONFIG", str(ROOT / "target" / "debug" / "check-config"))
    run = subprocess.run([checker, "-"], input=json.dumps(config), capture_output=True, text=True)
    if run.returncode != 0:
        return [f"spec.pluginConfig: {run.stdout.strip() or run.stderr.strip()}"]
    return []


def main():
    schemas = load_schemas(ROOT / "third_party" / "istio")
    passed = failed = 0
    for path in sorted((ROOT / "istio").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            name = f"{path.relative_to(ROOT)}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
            found = problems(doc, schemas) + plugin_config_problems(doc)
            if found:
                failed += 1
                print(f"FAIL {name}")
                for problem in found:
                    print(f"     {problem}")
            else:
                passed += 1
                print(f"ok   {name}")
    if passed + failed == 0:
        print("FAIL no manifests under istio/")
        failed = 1
    print(f"istio: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
