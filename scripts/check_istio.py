#!/usr/bin/env python3
"""Validate the manifests under istio/ against Istio's CRD schemas, without a cluster.

Each YAML document's apiVersion and kind pick a served CRD version from
third_party/istio/; the document is checked against that version's openAPIV3Schema
with a JSON Schema validator (draft 4, which OpenAPI 3.0 schemas follow), and each
WasmPlugin's pluginConfig is loaded through the filter's own config parser
(tests/src/bin/check-config.rs), as is the Wasm configuration an EnvoyFilter adds
(istio/examples/request-body-envoyfilter.yaml). The Kubernetes-only parts of those schemas
(x-kubernetes-*, including CEL rules) are not evaluated: an API server would also
check those. Extra manifest files (e.g. test fixtures) can be named on the command line.

The CUSTOM examples (CONVERSIONS: a mesh config, AuthorizationPolicies, the filter's
`jwt` block) are converted by scripts/convert_policy.py, as `make convert` does, and the
WasmPlugin it emits is validated the same way.

istio/kustomization.yaml is rendered by real kustomize (`kubectl kustomize`, kustomize
v5 built into kubectl), as listed and with its commented-out optional resources, and
what it outputs is validated the same way. Without kubectl the check fails and says
what to install; it never skips. check_kustomization says which checks stay here
because kustomize checks less.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from jsonschema import Draft4Validator

import convert_policy  # scripts/: the converter, run on the CUSTOM examples
from convert_policy import gateway_label  # one rule for "these labels are gateway pods"

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
    gateway = gateway_label((spec.get("selector") or {}).get("matchLabels") or {})
    modes = {m.get("mode") for m in spec.get("match") or []}
    if (gateway or spec.get("targetRefs") or spec.get("targetRef")) and modes == {"SERVER"}:
        found.append("spec.match: mode SERVER on a gateway: Istio counts gateway traffic as CLIENT, so the "
                     "plugin would never run there; use CLIENT or drop match")
    return found


def config_problems(where, config_json):
    """The filter's own config parser on one plugin configuration (JSON text)."""
    checker = os.environ.get("NEBULA_CHECK_CONFIG", str(ROOT / "target" / "debug" / "check-config"))
    run = subprocess.run([checker, "-"], input=config_json, capture_output=True, text=True)
    return [f"{where}: {run.stdout.strip() or run.stderr.strip()}"] if run.returncode != 0 else []


WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def envoyfilter_problems(doc):
    """An EnvoyFilter that adds the filter as a Wasm extension config (istio/examples/
    request-body-envoyfilter.yaml): its configuration loads, it fails closed, and with
    auth.with_request_body or auth.forward_body it sets allow_on_headers_stop_iteration."""
    found = []
    for i, patch in enumerate((doc.get("spec") or {}).get("configPatches") or []):
        typed = ((patch.get("patch") or {}).get("value") or {}).get("typed_config") or {}
        if patch.get("applyTo") != "EXTENSION_CONFIG" or typed.get("@type") != WASM_TYPE:
            continue
        where = f"spec.configPatches[{i}].patch.value.typed_config.config"
        wasm = typed.get("config") or {}
        if wasm.get("fail_open") is not False and wasm.get("failure_policy") != "FAIL_CLOSED":
            found.append(f"{where}.fail_open must be false: a module that cannot start would let requests through")
        text = (wasm.get("configuration") or {}).get("value")
        if not isinstance(text, str):
            found.append(f"{where}.configuration.value is missing")
            continue
        found += config_problems(f"{where}.configuration", text)
        try:
            auth = json.loads(text).get("auth") or {}
            body = "auth.with_request_body" if auth.get("with_request_body") is not None else None
            body = body or ("auth.forward_body" if auth.get("forward_body") is True else None)
        except (ValueError, AttributeError):
            body = None
        if body is not None and wasm.get("allow_on_headers_stop_iteration") is not True:
            found.append(f"{where}: {body} needs allow_on_headers_stop_iteration: true")
    return found


def plugin_config_problems(doc):
    """A WasmPlugin's pluginConfig (or an EnvoyFilter's Wasm configuration) must load
    through the filter's own config parser."""
    if doc.get("kind") == "EnvoyFilter":
        return envoyfilter_problems(doc)
    if doc.get("kind") != "WasmPlugin":
        return fail_open_problems(doc)
    config = (doc.get("spec") or {}).get("pluginConfig")
    if config is None:
        return ["spec.pluginConfig is missing: the filter needs at least auth.cluster or auth.host"]
    return config_problems("spec.pluginConfig", json.dumps(config)) + fail_open_problems(doc)


# (mesh config, AuthorizationPolicy and RequestAuthentication files, jwt block or None),
# from the repository root: converted as `make convert` is, with no flag.
CONVERSIONS = [
    ("istio/examples/custom-meshconfig.yaml", ["istio/examples/custom-authorizationpolicies.yaml",
                                               "istio/examples/custom-requestauthentication.yaml"], None),
    ("tests/data/custom/meshconfig.yaml", ["tests/data/custom/policies.yaml", "tests/data/custom/policies-opa.yaml",
                                           "tests/data/custom/requestauthentication.yaml"], None),
]


def converted(mesh, policies, jwt):
    """convert_policy.py's WasmPlugin for one example (as `make convert` prints it), or
    the refusal as a problem."""
    notes = []
    try:
        mesh_doc = convert_policy.pick_mesh(ROOT / mesh, convert_policy.documents(ROOT / mesh))
        inputs = [(ROOT / p, convert_policy.documents(ROOT / p)) for p in policies]
        docs = convert_policy.pick_policies(inputs, notes)
        block = convert_policy.read_jwt(ROOT / jwt) if jwt else None
        plugin, _, _ = convert_policy.convert(mesh_doc, docs, block,
                                              convert_policy.pick_request_authentications(inputs))
    except convert_policy.Refused as refused:
        return None, [f"make convert refused: {refused}"]
    return plugin, []


KUSTOMIZATION = "kustomization.yaml"
LOCAL_CONFIG = "config.kubernetes.io/local-config"
KUBECTL_HELP = ("kubectl is needed for `make istio-check`: it renders istio/ with its built-in kustomize "
                "(kubectl >= 1.27, kustomize v5; e.g. the kubernetes.io kubectl package or binary; "
                "Debian's kubernetes-client is too old)")


def kustomize(directory):
    """`kubectl kustomize DIR`: (rendered documents, None) or (None, kustomize's error)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit(f"error: {KUBECTL_HELP}")
    run = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    if run.returncode != 0:
        return None, "kustomize: " + (run.stderr.strip().splitlines() or ["failed"])[-1]
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc], None


def with_optional_resources(kust_text):
    """The kustomization with its commented-out resources (`# - serviceentry.yaml`) listed."""
    return re.sub(r"^(\s*)# (- [\w.-]+\.yaml)\s*$", r"\1\2", kust_text, flags=re.M)


def check_kustomization(path, schemas):
    """Renders the kustomization with real kustomize, as listed and with its optional
    resources enabled. Returns (problems, rendered variants: lists of (name, doc)).

    kustomize itself fails on a missing resource, a replacement source or target field
    that does not exist, and a malformed file. What it checks less is done here:
    - a replacement target that selects nothing is a silent no-op in kustomize, so each
      must select a manifest under istio/ (listed, or optional and commented out);
    - the settings ConfigMap must stay local-config (kustomize would emit and apply it);
    - the output is validated against the CRD schemas and the filter's config parser by
      the caller, like the plain manifests.
    """
    text = path.read_text()
    kust = yaml.safe_load(text) or {}
    found = []
    manifests = set()
    for file in sorted(path.parent.glob("*.yaml")):
        if file.name != KUSTOMIZATION:
            for doc in yaml.safe_load_all(file.read_text()):
                if doc:
                    manifests.add((doc.get("kind"), (doc.get("metadata") or {}).get("name")))
    for i, rep in enumerate(kust.get("replacements") or []):
        for target in rep.get("targets") or []:
            select = target.get("select") or {}
            sel = (select.get("kind"), select.get("name"))
            if sel not in manifests:
                found.append(f"replacements[{i}]: target {sel} is no manifest under istio/ (kustomize ignores it)")

    rendered = []
    optional = with_optional_resources(text)
    variants = [("as listed", text)] + ([("with the optional resources", optional)] if optional != text else [])
    with tempfile.TemporaryDirectory() as tmp:
        for file in path.parent.glob("*.yaml"):
            shutil.copy(file, tmp)
        for label, variant in variants:
            (Path(tmp) / KUSTOMIZATION).write_text(variant)
            docs, error = kustomize(tmp)
            if error:
                found.append(f"{label}: {error}")
                continue
            for doc in docs:
                if doc.get("kind") == "ConfigMap":
                    found.append(f"{label}: kustomize emits ConfigMap {doc['metadata'].get('name')}: its generator "
                                 f"needs options.annotations {LOCAL_CONFIG}: \"true\" (or it is applied for real)")
            rendered.append((label, [(f"{d.get('kind')} {(d.get('metadata') or {}).get('name')}", d)
                                     for d in docs if d.get("kind") != "ConfigMap"]))
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
        # Caught by kustomize itself:
        ("a misspelled resource", kust_text.replace("- wasmplugin.yaml", "- wasmplugins.yaml"), "wasmplugins.yaml"),
        ("a target field that does not exist", kust_text.replace("spec.pluginConfig.auth.host", "spec.pluginConfig.auth.hots"),
         "unable to find field"),
        ("a source key that is not generated", kust_text.replace("fieldPath: data.url", "fieldPath: data.uri"),
         "data.uri"),
        # Caught in kustomize's output (schemas, the filter's parser, fail-open rules):
        ("a generated value that is invalid", kust_text.replace("authHost=auth.prefect", "authHost=auth prefect"),
         "is not a host name"),
        ("a patch that makes the plugin fail open", kust_text + "patches:\n  - target: {kind: WasmPlugin}\n    patch: |\n"
         "      - {op: replace, path: /spec/failStrategy, value: FAIL_OPEN}\n", "FAIL_CLOSE"),
        ("an optional resource a replacement breaks", kust_text.replace("- spec.hosts.0", "- spec.hosts"),
         "spec.hosts"),
        # Checked here because kustomize checks less:
        ("a generator applied for real", kust_text.replace('local-config: "true"', 'local-config: "false"'), LOCAL_CONFIG),
        ("a replacement target that selects nothing", kust_text.replace("name: nebula-authz-auth", "name: nebula-authz-aut"),
         "kustomize ignores it"),
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
    envoyfilter = (ROOT / "istio" / "examples" / "request-body-envoyfilter.yaml").read_text()
    for label, old, new, expected in [
        ("an EnvoyFilter without allow_on_headers_stop_iteration", "allow_on_headers_stop_iteration: true",
         "allow_on_headers_stop_iteration: false", "needs allow_on_headers_stop_iteration"),
        ("an EnvoyFilter that fails open", "fail_open: false", "fail_open: true", "fail_open must be false"),
        ("an invalid EnvoyFilter configuration", '"max_request_bytes": 8192', '"max_request_bytes": 0',
         "max_request_bytes"),
    ]:
        doc = yaml.safe_load(envoyfilter.replace(old, new))
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

    for mesh, policies, jwt in CONVERSIONS:
        plugin, found = converted(mesh, policies, jwt)
        if plugin is not None:
            found = problems(plugin, schemas) + plugin_config_problems(plugin)
        shown = f"{mesh} {' '.join(policies)}{' --jwt ' + jwt if jwt else ''}"
        report(f"make convert {shown}: WasmPlugin", found, counts)

    kust = ROOT / "istio" / KUSTOMIZATION
    if kust.is_file():
        found, rendered = check_kustomization(kust, schemas)
        report(f"istio/{KUSTOMIZATION}: kubectl kustomize istio/ (as listed, with the optional resources)", found, counts)
        for label, docs in rendered:
            for name, doc in docs:
                found = problems(doc, schemas) + plugin_config_problems(doc)
                report(f"kubectl kustomize istio/ ({label}): {name}", found, counts)
    else:
        report(f"istio/{KUSTOMIZATION}", ["missing"], counts)

    if counts["passed"] + counts["failed"] == 0:
        print("FAIL no manifests under istio/")
        counts["failed"] = 1
    print(f"istio: {counts['passed']} passed, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
