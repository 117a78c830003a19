#!/usr/bin/env python3
"""Render envoy/envoy.yaml for a local run.

The file users copy is the file we run: this only swaps addresses, ports, the wasm
path and (optionally) the plugin configuration. Used by `make run` and by the Rust
integration tests, so there is one renderer.
"""
import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def host_port(value):
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def wasm_filter(config):
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in hcm["http_filters"]:
        if http_filter["name"] == "nebula-authz":
            return http_filter["typed_config"]["config"]
    raise SystemExit("envoy.yaml has no http filter named nebula-authz")


def wants_body(plugin_json):
    try:
        auth = json.loads(plugin_json).get("auth")
    except (ValueError, AttributeError):
        return False
    # ext_authz's with_request_body, or forwardAuth's forward_body.
    return isinstance(auth, dict) and (auth.get("with_request_body") is not None or auth.get("forward_body") is True)


def rename_cluster(config, old, new):
    """Give a cluster another name (e.g. Istio's outbound|4300||auth.<ns>.svc.cluster.local)."""
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == old:
            cluster["name"] = cluster["load_assignment"]["cluster_name"] = new
            return
    raise SystemExit(f"envoy.yaml has no cluster named {old}")


def wasmplugin_config(path):
    """The pluginConfig of the WasmPlugin in a manifest, as the JSON istiod hands to Envoy."""
    for doc in yaml.safe_load_all(Path(path).read_text()):
        if doc and doc.get("kind") == "WasmPlugin":
            return json.dumps(doc["spec"]["pluginConfig"])
    raise SystemExit(f"{path} has no WasmPlugin")


def set_endpoint(config, cluster_name, address):
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == cluster_name:
            sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
                "address"]["socket_address"]
            sock["address"], sock["port_value"] = address
            return
    raise SystemExit(f"envoy.yaml has no cluster named {cluster_name}")


def named_endpoint(value):
    name, _, address = value.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {value!r}")
    return name, host_port(address)


def add_cluster(config, name, address):
    """One more cluster, shaped like the upstream's (e.g. a JWKS endpoint for the JWT tests)."""
    cluster = json.loads(json.dumps(next(
        c for c in config["static_resources"]["clusters"] if c["name"] == "upstream")))
    cluster["name"] = cluster["load_assignment"]["cluster_name"] = name
    config["static_resources"]["clusters"].append(cluster)
    set_endpoint(config, name, address)


def upstream_protocol(config, h2, http1_trailers):
    """The upstream cluster's protocol: HTTP/2 (a gRPC backend's, trailers always
    carried), or HTTP/1.1 with `enable_trailers` (Envoy's HTTP/1 codec drops trailers
    by default)."""
    cluster = next(c for c in config["static_resources"]["clusters"] if c["name"] == "upstream")
    explicit = {"http2_protocol_options": {}} if h2 else {"http_protocol_options": {"enable_trailers": http1_trailers}}
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": explicit,
        },
    }


def serve_tls(listener, cert, key, client_ca=None, require_client_certificate=True):
    """Downstream TLS on the listener, ALPN h2 then http/1.1 (the codec is AUTO). With
    `client_ca`, client certificates are verified against it (the mTLS of Traefik's clientAuth setups; in
    Istio the sidecar does this), and required unless `require_client_certificate` is off."""
    tls_context = {
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{
                "certificate_chain": {"filename": str(Path(cert).resolve())},
                "private_key": {"filename": str(Path(key).resolve())},
            }],
        },
    }
    if client_ca:
        tls_context["require_client_certificate"] = require_client_certificate
        tls_context["common_tls_context"]["validation_context"] = {
            "trusted_ca": {"filename": str(Path(client_ca).resolve())}}
    # The TLS inspector records the client's SNI (connection.sni, RBAC's
    # requested_server_name), as on an Istio sidecar's inbound listener.
    listener.setdefault("listener_filters", []).append({
        "name": "envoy.filters.listener.tls_inspector",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"},
    })
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            **tls_context,
        },
    }


FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def ecds_resource(wasm_config, version):
    """The discovery response a path-based ECDS source reads: one TypedExtensionConfig."""
    return {
        "version_info": str(version),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": "nebula-authz",
            "typed_config": {"@type": FILTER_TYPE, "config": wasm_config},
        }],
    }


def serve_filter_by_ecds(config, directory):
    """Take the wasm filter from a watched file (ECDS), as istiod delivers WasmPlugins.

    Writes DIRECTORY/nebula-authz.json (version 1) and points the http filter at it;
    a new version is written elsewhere in DIRECTORY and renamed over it (Envoy reloads
    on the move into the watched directory). Without a valid config the filter is
    missing and Envoy answers 500 (no default_config: nothing ever runs unfiltered).
    """
    # Any xDS subscription needs a node identity (istiod's sidecars have one).
    config.setdefault("node", {"id": "nebula-authz", "cluster": "nebula-authz"})
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    for http_filter in hcm["http_filters"]:
        if http_filter["name"] == "nebula-authz":
            wasm_config = http_filter.pop("typed_config")["config"]
            directory = Path(directory).resolve()
            path = directory / "nebula-authz.json"
            path.write_text(json.dumps(ecds_resource(wasm_config, 1), indent=2))
            http_filter["config_discovery"] = {
                "config_source": {
                    "path_config_source": {"path": str(path), "watched_directory": {"path": str(directory)}},
                },
                "type_urls": [FILTER_TYPE],
            }
            return
    raise SystemExit("envoy.yaml has no http filter named nebula-authz")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", default=str(ROOT / "envoy" / "envoy.yaml"))
    p.add_argument("--wasm", required=True, help="path of the built .wasm")
    p.add_argument("--listen-port", type=int, default=10000, help="0 picks a free port")
    p.add_argument("--admin-port", type=int, default=9901, help="0 picks a free port")
    p.add_argument("--bind", default="127.0.0.1", help="address for listener and admin")
    p.add_argument("--auth", type=host_port, help="HOST:PORT of the auth service")
    p.add_argument("--upstream", type=host_port, help="HOST:PORT of the upstream")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--plugin-config", help="file with the plugin JSON ('-' for stdin)")
    source.add_argument("--plugin-config-from", metavar="MANIFEST",
                        help="take the plugin JSON from a WasmPlugin manifest's pluginConfig")
    p.add_argument("--auth-cluster", metavar="NAME", help="rename the auth cluster (Istio's naming)")
    p.add_argument("--istio-sidecar", action="store_true",
                   help="the HTTP connection manager as istiod renders a sidecar's (pathNormalization "
                        "BASE: normalize_path), for the tests against Istio's ext_authz")
    p.add_argument("--cluster", type=named_endpoint, action="append", default=[], metavar="NAME=HOST:PORT",
                   help="add a cluster (repeatable), e.g. a JWKS endpoint")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"),
                   help="serve the listener over TLS with this PEM certificate chain and key")
    p.add_argument("--client-ca", metavar="CA",
                   help="with --tls: verify client certificates against this PEM CA (mTLS)")
    p.add_argument("--tls-client-cert", choices=["required", "optional"], default="required",
                   help="with --client-ca: whether a client certificate is required")
    p.add_argument("--xff-trusted-hops", type=int, metavar="N",
                   help="HTTP connection manager xff_num_trusted_hops (Envoy's own proxy trust)")
    p.add_argument("--no-remote-address", action="store_true",
                   help="use_remote_address: false (Envoy then takes the client from X-Forwarded-For)")
    p.add_argument("--ecds", metavar="DIR",
                   help="deliver the wasm filter by ECDS from DIR/nebula-authz.json (a watched file)")
    p.add_argument("--without-body-stop-iteration", action="store_true",
                   help="do not set allow_on_headers_stop_iteration even with auth.with_request_body or forward_body "
                        "(tests the filter's guard for an Envoy without it)")
    p.add_argument("--upstream-h2", action="store_true",
                   help="speak HTTP/2 (h2c, prior knowledge) to the upstream, as to a gRPC backend")
    p.add_argument("--http1-trailers", action="store_true",
                   help="HTTP/1.1 trailers: accepted from clients (the connection manager's enable_trailers) "
                        "and sent to an HTTP/1.1 upstream (the cluster's)")
    p.add_argument("--istio-stats-tags", action="store_true",
                   help="tag stats as Istio's bootstrap does (tools/packaging/common/envoy_bootstrap.json: Envoy's "
                        "default tags off, cluster stats tagged cluster_name), for the dashboard and alert checks")
    p.add_argument("--zipkin", type=host_port, metavar="HOST:PORT",
                   help="trace with Envoy's Zipkin tracer (B3 headers), every request sampled, spans sent to "
                        "HOST:PORT, as an Istio sidecar with its default tracer")
    p.add_argument("--access-log", nargs=2, metavar=("PATH", "FORMAT"),
                   help="a file access log on the connection manager, with this text format")
    p.add_argument("--failure-policy", choices=["FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD"],
                   help="the wasm filter's failure_policy (replaces fail_open)")
    args = p.parse_args()

    config = yaml.safe_load(Path(args.source).read_text())
    config["admin"]["address"]["socket_address"].update(
        address=args.bind, port_value=args.admin_port)
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address=args.bind, port_value=args.listen_port)

    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if args.istio_sidecar:
        hcm["normalize_path"] = True
    if args.xff_trusted_hops is not None:
        hcm["xff_num_trusted_hops"] = args.xff_trusted_hops
    if args.no_remote_address:
        hcm["use_remote_address"] = False
    if args.istio_stats_tags:
        config["stats_config"] = {"use_all_default_tags": False, "stats_tags": [
            {"tag_name": "cluster_name", "regex": "^cluster\\.((.+?(\\..+?\\.svc\\.cluster\\.local)?)\\.)"}]}
    if args.zipkin:
        add_cluster(config, "zipkin", args.zipkin)
        hcm["tracing"] = {
            "random_sampling": {"value": 100},
            "provider": {"name": "envoy.tracers.zipkin", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin", "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON"}},
        }

    if args.access_log:
        path, text = args.access_log
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path, "log_format": {"text_format_source": {"inline_string": text + "\n"}}}}]

    plugin = wasm_filter(config)
    plugin["vm_config"]["code"]["local"]["filename"] = str(Path(args.wasm).resolve())
    if args.plugin_config:
        text = sys.stdin.read() if args.plugin_config == "-" else Path(args.plugin_config).read_text()
        json.loads(text)  # the filter validates fields; this only catches a broken file early
        plugin["configuration"]["value"] = text
    if args.plugin_config_from:
        plugin["configuration"]["value"] = wasmplugin_config(args.plugin_config_from)
    # auth.with_request_body / forward_body need the headers' StopIteration to reach Envoy as it is, so
    # the filter sees the body before the callout (docs/istio.md, "Request body").
    if wants_body(plugin["configuration"]["value"]) and not args.without_body_stop_iteration:
        plugin["allow_on_headers_stop_iteration"] = True
    if args.auth:
        set_endpoint(config, "auth", args.auth)
    if args.auth_cluster:
        rename_cluster(config, "auth", args.auth_cluster)
    if args.upstream:
        set_endpoint(config, "upstream", args.upstream)
    if args.upstream_h2 or args.http1_trailers:
        upstream_protocol(config, args.upstream_h2, args.http1_trailers)
    if args.http1_trailers:
        hcm.setdefault("http_protocol_options", {})["enable_trailers"] = True
    for name, address in args.cluster:
        add_cluster(config, name, address)
    if args.failure_policy:
        plugin.pop("fail_open", None)
        plugin["failure_policy"] = args.failure_policy
    if args.tls:
        serve_tls(listener, *args.tls, args.client_ca, args.tls_client_cert == "required")
    if args.ecds:
        serve_filter_by_ecds(config, args.ecds)

    # JSON is YAML too: Envoy reads it under either extension, and it round-trips exactly.
    json.dump(config, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
