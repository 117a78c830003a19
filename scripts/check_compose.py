#!/usr/bin/env python3
"""Validate envoy/docker-compose.yml with docker-compose itself (no engine needed).

usage: check_compose.py ENVOY_VERSION

`docker-compose config` (Debian's docker-compose) parses the file, checks it against the
compose schema and prints it normalized, with absolute paths. On that output we check
what the schema cannot: the envoy service runs the Envoy version the tests run, mounts
envoy/envoy.yaml (the file the integration tests render and run) and the release .wasm
at the paths envoy.yaml names, and publishes its ports on loopback only.
Without docker-compose it fails and says what to install; it never skips.
`--self-test` cases (broken copies) run first and must each be caught.
"""
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "envoy" / "docker-compose.yml"
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "nebula_authz.wasm"


def compose_config(path):
    """(normalized config, None) or (None, docker-compose's error)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        raise SystemExit("error: docker-compose is needed (`apt-get install docker-compose`; `make compose-check` "
                         "installs it)")
    # Relative paths resolve against envoy/, wherever the file is (the self-test's copies).
    run = subprocess.run([exe, "-f", str(path), "--project-directory", str(COMPOSE.parent), "config"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return None, "docker-compose config: " + " ".join(run.stderr.split())
    return yaml.safe_load(run.stdout), None


def envoy_filenames():
    """The config and wasm paths envoy/envoy.yaml expects inside the container."""
    config = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "nebula-authz")
    return wasm["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]


def problems(path, envoy_version, envoy_yaml, wasm):
    config, error = compose_config(path)
    if error:
        return [error]
    found = []
    envoy = (config.get("services") or {}).get("envoy")
    if not envoy:
        return ["no service `envoy`"]
    if envoy.get("image") != f"envoyproxy/envoy:v{envoy_version}":
        found.append(f"envoy image is {envoy.get('image')!r}, the tests run Envoy {envoy_version} (Makefile ENVOY_VERSION)")
    command = envoy.get("command") or []
    config_path = command[command.index("-c") + 1] if "-c" in command[:-1] else None
    mounts = {}
    for volume in envoy.get("volumes") or []:
        if isinstance(volume, str):  # SOURCE:TARGET[:MODE]
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source"), volume.get("target")
        mounts[target] = str(Path(source).resolve())
    if config_path is None:
        found.append("envoy command has no `-c CONFIG`")
    elif mounts.get(config_path) != str(envoy_yaml.resolve()):
        found.append(f"{config_path} is {mounts.get(config_path)!r}, not the tested {envoy_yaml}")
    wasm_path = envoy_filenames()
    if mounts.get(wasm_path) != str(wasm.resolve()):
        found.append(f"{wasm_path} (envoy.yaml's module) is {mounts.get(wasm_path)!r}, not the release build {wasm}")
    for port in envoy.get("ports") or []:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        if host_ip not in ("127.0.0.1", "::1"):
            found.append(f"port {port} is published beyond loopback (the admin API can stop Envoy)")
    return found


def self_test(envoy_version):
    text = COMPOSE.read_text()
    cases = [
        ("a file docker-compose rejects", text.replace("services:", "servics:"), "docker-compose config"),
        ("another envoy.yaml", text.replace("./envoy.yaml:", "./demo/envoy.yaml:"), "not the tested"),
        ("another Envoy version", text.replace(f"v{envoy_version}", "v1.30.0"), "the tests run Envoy"),
        ("the admin port on every interface", text.replace('"127.0.0.1:9901:9901"', '"9901:9901"'), "beyond loopback"),
    ]
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / "docker-compose.yml"
        for label, text_, expected in cases:
            broken.write_text(text_)
            found = problems(broken, envoy_version, ROOT / "envoy" / "envoy.yaml", WASM)
            if any(expected in p for p in found):
                print(f"ok   self-test: {label} is caught")
            else:
                failed += 1
                print(f"FAIL self-test: {label} is not caught: {found}")
    return failed


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    envoy_version = sys.argv[1]
    failed = self_test(envoy_version)
    found = problems(COMPOSE, envoy_version, ROOT / "envoy" / "envoy.yaml", WASM)
    for problem in found:
        print(f"FAIL {COMPOSE.relative_to(ROOT)}: {problem}")
    if not found:
        print(f"ok   {COMPOSE.relative_to(ROOT)}: docker-compose config, Envoy {envoy_version}, "
              "mounts the tested envoy.yaml and the release .wasm")
    return 1 if found or failed else 0


if __name__ == "__main__":
    sys.exit(main())
