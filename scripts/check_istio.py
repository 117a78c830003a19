#!/usr/bin/env python3
"""Validate the manifests under istio/ against Istio's CRD schemas, without a cluster.

Each YAML document's apiVersion and kind pick a served CRD version from
third_party/istio/; the document is checked against that version's openAPIV3Schema
with a JSON Schema validator (draft 4, which OpenAPI 3.0 schemas follow), and each
WasmPlugin's pluginConfig is loaded through the filter's own config parser
(tests/src/bin/check-config.rs). The Kubernetes-only parts of those schemas
(x-kubernetes-*, including CEL rules) are not evaluated: an API server would also
check those. Extra manifest files (e.g. test fixtures) can be named on the command line.

istio/kustomization.yaml is not a CRD and no kustomize binary is installable from the
registries this project uses, so it is checked for what can be checked without one
(see check_kustomization): it uses only the fields this script understands, its
resources exist and are validated above, and its generated values and replacements
resolve. The replacements are then applied to copies of the manifests (the subset of
kustomize semantics the file uses: whole-value replacement on dotted field paths, plus
`namespace:`) and the results are validated again. This is a check of our file, not a
re-implementation of kustomize: `kustomize build istio/` remains the reference.
"""
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from jsonschema import Draft4Validator

from convert_policy import looks_like_gateway  # scripts/: one rule for "these labels are gateway pods"

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


def fail_open_problems(doc):
    """What the schema allows but would let requests through unchecked."""
    if doc.get("kind") != "WasmPlugin":
        return []
    spec = doc.get("spec") or {}
    found = []
    if spec.get("failStrategy") != "FAIL_CLOSE":
        found.append("spec.failStrategy must be FAIL_CLOSE: with FAIL_OPEN a module that cannot be pulled "
                     "or started is skipped and requests go through unchecked")
    gateway = looks_like_gateway((spec.get("selector") or {}).get("matchLabels") or {})
    modes = {m.get("mode") for m in spec.get("match") or []}
    if (gateway or spec.get("targetRefs") or spec.get("targetRef")) and modes == {"SERVER"}:
        found.append("spec.match: mode SERVER on a gateway: Istio counts gateway traffic as CLIENT, so the "
                     "plugin would never run there; use CLIENT or drop match")
    return found


def plugin_config_problems(doc):
    """A WasmPlugin's pluginConfig must load through the filter's own config parser."""
    if doc.get("kind") != "WasmPlugin":
        return fail_open_problems(doc)
    config = (doc.get("spec") or {}).get("pluginConfig")
    if config is None:
        return ["spec.pluginConfig is missing: the filter needs at least auth.cluster or auth.host"]
    checker = os.environ.get("NEBULA_CHECK_CONFIG", str(ROOT / "target" / "debug" / "check-config"))
    run = subprocess.run([checker, "-"], input=json.dumps(config), capture_output=True, text=True)
    if run.returncode != 0:
        return [f"spec.pluginConfig: {run.stdout.strip() or run.stderr.strip()}"] + fail_open_problems(doc)
    return fail_open_problems(doc)


KUSTOMIZATION = "kustomization.yaml"
# Fields check_kustomization understands; any other field fails the check rather than
# going unchecked.
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "replacements"}
LOCAL_CONFIG = "config.kubernetes.io/local-config"


def get_path(doc, dotted):
    """Follows a kustomize fieldPath (`spec.hosts.0`); returns (parent, key) or None."""
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        node = step(node, part)
        if node is None:
            return None
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        return node, last
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        return node, int(last)
    return None


def step(node, part):
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return None


def check_kustomization(path, schemas):
    """Returns (problems, rendered variants): each variant is a list of (name, doc)."""
    kust = yaml.safe_load(path.read_text()) or {}
    found = []
    if (kust.get("apiVersion"), kust.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        found.append("expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization")
    unknown = sorted(set(kust) - KUSTOMIZATION_FIELDS)
    if unknown:
        found.append(f"fields {unknown} are not checked by scripts/check_istio.py: teach it, or drop them")

    # Every manifest under istio/, by (kind, name): listed ones and optional ones.
    manifests = {}
    for file in sorted(path.parent.glob("*.yaml")):
        if file.name != KUSTOMIZATION:
            for doc in yaml.safe_load_all(file.read_text()):
                if doc:
                    manifests[(doc.get("kind"), (doc.get("metadata") or {}).get("name"))] = (file.name, doc)
    listed = []
    for resource in kust.get("resources") or []:
        file = path.parent / resource
        if not file.is_file():
            found.append(f"resources: {resource} does not exist (directories and URLs are not checked)")
            continue
        listed += [key for key, (name, _) in manifests.items() if name == resource]

    values = {}
    for gen in kust.get("configMapGenerator") or []:
        annotations = (gen.get("options") or {}).get("annotations") or {}
        if annotations.get(LOCAL_CONFIG) != "true":
            found.append(f"configMapGenerator {gen.get('name')}: needs options.annotations {LOCAL_CONFIG}: \"true\" "
                         "(or kustomize applies it as a real ConfigMap)")
        for literal in gen.get("literals") or []:
            key, sep, value = literal.partition("=")
            if not sep:
                found.append(f"configMapGenerator {gen.get('name')}: literal {literal!r} is not key=value")
            values[(gen.get("name"), f"data.{key}")] = value

    targets_of = []  # (value, kind, name, fieldPath)
    for i, rep in enumerate(kust.get("replacements") or []):
        source = rep.get("source") or {}
        key = (source.get("name"), source.get("fieldPath"))
        if source.get("kind") != "ConfigMap" or key not in values:
            found.append(f"replacements[{i}].source: no generated ConfigMap value {key}")
            continue
        for target in rep.get("targets") or []:
            select = target.get("select") or {}
            sel = (select.get("kind"), select.get("name"))
            if sel not in manifests:
                found.append(f"replacements[{i}]: target {sel} is no manifest under istio/")
            for field in target.get("fieldPaths") or []:
                targets_of.append((values[key], sel, field, i))

    # Render: as listed, and with every optional manifest a replacement targets.
    optional = sorted({sel for _, sel, _, _ in targets_of if sel in manifests and sel not in listed})
    variants = [("as listed", listed)] + ([("with " + ", ".join(manifests[k][0] for k in optional), listed + optional)]
                                          if optional else [])
    rendered = []
    for label, keys in variants:
        docs = {key: copy.deepcopy(manifests[key][1]) for key in keys}
        for value, sel, field, i in targets_of:
            if sel not in docs:
                continue  # kustomize: a target that selects nothing is a no-op
            at = get_path(docs[sel], field)
            if at is None:
                found.append(f"replacements[{i}]: {sel[0]} {sel[1]} has no field {field} (kustomize fails)")
                continue
            parent, last = at
            parent[last] = value
        for doc in docs.values():
            if kust.get("namespace"):
                doc.setdefault("metadata", {})["namespace"] = kust["namespace"]
        rendered.append((label, [(f"{manifests[k][0]}: {k[0]} {k[1]}", docs[k]) for k in keys]))
    return found, rendered


def report(name, found, counts):
    if found:
        counts["failed"] += 1
        print(f"FAIL {name}")
        for problem in found:
            print(f"     {problem}")
    else:
        counts["passed"] += 1
        print(f"ok   {name}")


def self_test(schemas, counts):
    """The checks above must catch these broken copies of istio/ (each must fail)."""
    kust_text = (ROOT / "istio" / KUSTOMIZATION).read_text()
    cases = [
        ("a misspelled resource", kust_text.replace("- wasmplugin.yaml", "- wasmplugins.yaml"), "does not exist"),
        ("a target field that does not exist", kust_text.replace("spec.pluginConfig.auth.host", "spec.pluginConfig.auth.hots"),
         "has no field"),
        ("a generated value that is invalid", kust_text.replace("authHost=auth.prefect", "authHost=auth prefect"),
         "is not a host name"),
        ("an unchecked field", kust_text + "namePrefix: x-\n", "not checked"),
        ("a generator applied for real", kust_text.replace('local-config: "true"', 'local-config: "false"'), LOCAL_CONFIG),
        ("a source key that is not generated", kust_text.replace("fieldPath: data.url", "fieldPath: data.uri"),
         "no generated ConfigMap value"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for file in (ROOT / "istio").glob("*.yaml"):
            shutil.copy(file, tmp)
        for label, text, expected in cases:
            (Path(tmp) / KUSTOMIZATION).write_text(text)
            found, rendered = check_kustomization(Path(tmp) / KUSTOMIZATION, schemas)
            found += [p for _, docs in rendered for _, doc in docs for p in problems(doc, schemas) + plugin_config_problems(doc)]
            caught = any(expected in problem for problem in found)
            report(f"self-test: {label} is caught", [] if caught else [f"no problem mentions {expected!r}: {found}"], counts)
    plugin = (ROOT / "istio" / "wasmplugin.yaml").read_text()
    for label, old, new, expected in [
        ("a WasmPlugin outside the CRD schema", "failStrategy: FAIL_CLOSE", "failStrategy: FAIL_OPEN_PLEASE", "failStrategy"),
        ("a WasmPlugin that fails open", "failStrategy: FAIL_CLOSE", "failStrategy: FAIL_OPEN", "FAIL_CLOSE"),
        ("a gateway WasmPlugin that would never run", "app: prefect-server", "istio: ingressgateway", "mode SERVER"),
        ("an invalid pluginConfig", "port: 4300", "port: 4300\n      timeout_ms: 0", "auth.timeout_ms"),
    ]:
        doc = yaml.safe_load(plugin.replace(old, new))
        found = problems(doc, schemas) + plugin_config_problems(doc)
        caught = any(expected in problem for problem in found)
        report(f"self-test: {label} is caught", [] if caught else [f"not caught: {found}"], counts)


def main():
    schemas = load_schemas(ROOT / "third_party" / "istio")
    counts = {"passed": 0, "failed": 0}
    self_test(schemas, counts)
    files = [p for p in sorted((ROOT / "istio").glob("*.yaml")) if p.name != KUSTOMIZATION]
    files += [Path(arg).resolve() for arg in sys.argv[1:]]
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            name = f"{path.relative_to(ROOT)}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
            report(name, problems(doc, schemas) + plugin_config_problems(doc), counts)

    kust = ROOT / "istio" / KUSTOMIZATION
    if kust.is_file():
        found, rendered = check_kustomization(kust, schemas)
        report(f"istio/{KUSTOMIZATION}: resources, generator, replacements", found, counts)
        for label, docs in rendered:
            for name, doc in docs:
                found = problems(doc, schemas) + plugin_config_problems(doc)
                report(f"istio/{KUSTOMIZATION} rendered ({label}): {name}", found, counts)
    else:
        report(f"istio/{KUSTOMIZATION}", ["missing"], counts)

    if counts["passed"] + counts["failed"] == 0:
        print("FAIL no manifests under istio/")
        counts["failed"] = 1
    print(f"istio: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
