#!/usr/bin/env python3
"""Check deploy/observability/ against what a real Envoy with the filter exports.

usage: check_observability.py STATS   (STATS: a /stats/prometheus scrape of the demo
Envoy, written by `scripts/run_demo.py --check --save-stats STATS` in make demo-check)

- grafana-dashboard.json parses, every panel has a unique id and PromQL targets, and
  every `$variable` it uses is a dashboard variable (or one of Grafana's own).
- prometheus-rules.yaml has the structure Prometheus loads (groups → rules, each rule
  exactly one of alert/record with an expr, valid names and durations, string labels and
  annotations). The real tools check the rest in `make prometheus-check`: `promtool
  check rules`, `promtool test rules` and a real Prometheus scraping real Envoys
  (tests/tests/prometheus_scrape.rs).
- Every metric either file queries (`nebula_authz_*`, `envoy_*`) is a sample name in the
  scrape, or a rule the file records; and each label matcher on it (dashboard variables
  set to their current value) matches at least one exported sample, so a dashboard for
  the cluster `auth` shows data for the cluster `auth` (of a metric selected twice,
  `envoy_cluster_name` or Istio's `cluster_name`, one selector must match).

`--self-test` is run first: broken copies of both files must each be caught.
"""
import copy
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DIR = ROOT / "deploy" / "observability"
DASHBOARD = DIR / "grafana-dashboard.json"
RULES = DIR / "prometheus-rules.yaml"

# A metric name outside a string: `{__name__=~"envoy_..."}` is a pattern, checked by the
# real Prometheus of tests/tests/prometheus_scrape.rs, not here.
NAME_PATTERN = re.compile(r'__name__\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"')
METRIC = re.compile(r"(?<![\w\"])((?:nebula_authz|envoy)[A-Za-z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+\S+")
LABEL = re.compile(r'([A-Za-z_]\w*)="((?:[^"\\]|\\.)*)"')
DURATION = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RECORD = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GRAFANA_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s", "__range_ms"}


def exported(stats_text):
    """name -> list of label dicts, from the Prometheus text format."""
    samples = {}
    for line in stats_text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in LABEL.findall(m[2] or "")}
            samples.setdefault(m[1], []).append(labels)
    return samples


def balanced(expr):
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def metric_problems(where, expr, samples, recorded):
    """A selector whose matchers no exported sample meets is a problem unless another
    selector of the same metric in `expr` does: `a{envoy_cluster_name=~"x"} or
    a{cluster_name=~"x"}` takes a plain Envoy's labels or Istio's, and this scrape is of
    a plain Envoy (tests/tests/prometheus_scrape.rs checks both with a real Prometheus)."""
    found = [] if balanced(expr) else [f"{where}: unbalanced brackets in {expr!r}"]
    expr = NAME_PATTERN.sub("", expr)
    misses = {}
    for name, selector in METRIC.findall(expr):
        if name in recorded:
            continue
        if name not in samples:
            found.append(f"{where}: {name} is not exported by Envoy with the filter (not in /stats/prometheus)")
            continue
        missed = []
        for label, op, value in MATCHER.findall(selector or ""):
            def hit(labels):
                have = labels.get(label, "")
                if op in ("=", "!="):
                    return (have == value) == (op == "=")
                return bool(re.fullmatch(value, have)) == (op == "=~")
            if not any(hit(labels) for labels in samples[name]):
                missed.append(f"{where}: no exported {name} sample has {label}{op}\"{value}\"")
        misses.setdefault(name, []).append(missed)
    for name, alternatives in misses.items():
        if all(alternatives):
            found += [m for missed in alternatives for m in missed]
    return found


def dashboard_problems(text, samples):
    try:
        dash = json.loads(text)
    except ValueError as e:
        return [f"{DASHBOARD.name}: not valid JSON: {e}"]
    found = []
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list") or []}
    ids = [p.get("id") for p in dash.get("panels") or []]
    if not ids:
        found.append(f"{DASHBOARD.name}: no panels")
    if len(set(ids)) != len(ids):
        found.append(f"{DASHBOARD.name}: panel ids are not unique: {ids}")
    for panel in dash.get("panels") or []:
        where = f"{DASHBOARD.name}: panel {panel.get('id')} {panel.get('title')!r}"
        targets = [t for t in panel.get("targets") or [] if t.get("expr")]
        if not targets:
            found.append(f"{where}: no PromQL targets")
        for target in targets:
            expr = target["expr"]
            for var in re.findall(r"\$\{?(\w+)\}?", expr + json.dumps(panel.get("datasource"))):
                if var not in variables and var not in GRAFANA_VARS:
                    found.append(f"{where}: ${var} is not a dashboard variable")
            # Evaluate matchers as the dashboard opens: each variable at its current value.
            for name, var in variables.items():
                current = (var.get("current") or {}).get("value", var.get("query", ""))
                expr = expr.replace(f"${{{name}}}", str(current)).replace(f"${name}", str(current))
            found += metric_problems(f"{where} {target.get('refId')}", expr, samples, set())
    return found


def rules_problems(text, samples):
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return [f"{RULES.name}: not valid YAML: {e}"]
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
        return [f"{RULES.name}: must be a mapping with only `groups:` (a list)"]
    found, names, recorded, exprs = [], set(), set(), []
    for g, group in enumerate(doc["groups"]):
        where = f"{RULES.name}: groups[{g}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str) or not group.get("name"):
            found.append(f"{where}: needs a name")
            continue
        if group["name"] in names:
            found.append(f"{where}: group name {group['name']!r} is used twice")
        names.add(group["name"])
        if set(group) - {"name", "interval", "rules", "limit"}:
            found.append(f"{where}: unknown fields {sorted(set(group) - {'name', 'interval', 'rules', 'limit'})}")
        if "interval" in group and not DURATION.match(str(group["interval"])):
            found.append(f"{where}: interval {group['interval']!r} is not a duration")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            found.append(f"{where}: needs a non-empty rules list")
            continue
        for r, rule in enumerate(rules):
            at = f"{where}.rules[{r}]"
            if not isinstance(rule, dict):
                found.append(f"{at}: not a mapping")
                continue
            if set(rule) - RULE_FIELDS:
                found.append(f"{at}: unknown fields {sorted(set(rule) - RULE_FIELDS)}")
            if ("alert" in rule) == ("record" in rule):
                found.append(f"{at}: needs exactly one of alert, record")
            if "alert" in rule and not NAME.match(str(rule["alert"])):
                found.append(f"{at}: alert name {rule['alert']!r} is not valid")
            if "record" in rule:
                if not RECORD.match(str(rule["record"])):
                    found.append(f"{at}: record name {rule['record']!r} is not a valid metric name")
                recorded.add(str(rule["record"]))
                if set(rule) & {"for", "keep_firing_for", "annotations"}:
                    found.append(f"{at}: a recording rule takes no for/keep_firing_for/annotations")
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                found.append(f"{at}: needs an expr (a PromQL string)")
            else:
                exprs.append((f"{at} {rule.get('alert') or rule.get('record')}", rule["expr"]))
            for key in ("for", "keep_firing_for"):
                if key in rule and not DURATION.match(str(rule[key])):
                    found.append(f"{at}: {key} {rule[key]!r} is not a duration")
            for key in ("labels", "annotations"):
                if key in rule and (not isinstance(rule[key], dict)
                                    or not all(isinstance(v, str) and NAME.match(k) for k, v in rule[key].items())):
                    found.append(f"{at}: {key} must map label names to strings")
    for where, expr in exprs:
        found += metric_problems(where, expr, samples, recorded)
    return found


def self_test(samples):
    dash, rules = DASHBOARD.read_text(), RULES.read_text()
    broken_dash = json.loads(dash)
    broken_dash["panels"][0]["targets"][0]["expr"] = "sum(rate(nebula_authz_erors[5m]))"
    cluster_dash = json.loads(dash)
    for var in cluster_dash["templating"]["list"]:
        if var["name"] == "auth_cluster":
            var["current"] = {"text": "authz", "value": "authz"}
    novar_dash = json.loads(dash)
    novar_dash["panels"][0]["targets"][0]["expr"] += " * $nosuchvar"
    cases = [
        ("a dashboard metric the filter does not export", dashboard_problems, json.dumps(broken_dash), "nebula_authz_erors"),
        ("a dashboard cluster no sample has", dashboard_problems, json.dumps(cluster_dash), 'envoy_cluster_name=~"authz"'),
        ("an undefined dashboard variable", dashboard_problems, json.dumps(novar_dash), "$nosuchvar"),
        ("a dashboard that is not JSON", dashboard_problems, dash[:-3], "not valid JSON"),
        ("a rule metric the filter does not export", rules_problems, rules.replace("nebula_authz_denies", "nebula_authz_deny"),
         "nebula_authz_deny is not exported"),
        ("a rule without expr", rules_problems, rules.replace("expr: sum(rate(nebula_authz_cache_stale_served[5m])) > 0",
                                                              "exp: sum(rate(nebula_authz_cache_stale_served[5m])) > 0"),
         "needs an expr"),
        ("a bad duration", rules_problems, rules.replace("for: 5m", "for: 5 minutes", 1), "not a duration"),
        ("unbalanced PromQL", rules_problems, rules.replace("> 1000", ")) > 1000"), "unbalanced"),
        ("rules not under groups", rules_problems, "rules: []\n", "only `groups:`"),
    ]
    failed = 0
    for label, check, text, expected in cases:
        found = check(text, samples)
        if any(expected in p for p in found):
            print(f"ok   self-test: {label} is caught")
        else:
            failed += 1
            print(f"FAIL self-test: {label} is not caught: {found}")
    return failed


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    stats = Path(sys.argv[1])
    if not stats.is_file():
        sys.exit(f"error: no scrape at {stats}: run `make demo-check` (scripts/run_demo.py --check --save-stats {stats})")
    samples = exported(stats.read_text())
    ours = sorted(n for n in samples if n.startswith("nebula_authz_"))
    if not ours:
        sys.exit(f"error: {stats} has no nebula_authz_* metric: not a scrape of Envoy with the filter")
    failed = self_test(samples)
    found = dashboard_problems(DASHBOARD.read_text(), samples) + rules_problems(RULES.read_text(), samples)
    for problem in found:
        print(f"FAIL {problem}")
    used = set(METRIC.findall(DASHBOARD.read_text() + RULES.read_text()))
    unused = [n for n in ours if n not in {name for name, _ in used}]
    print(f"observability: {len(ours)} nebula_authz_* metrics exported"
          + (f" ({', '.join(unused)} not on the dashboard or in the rules)" if unused else ", all used")
          + f"; {len(found) + failed} problems")
    return 1 if found or failed else 0


if __name__ == "__main__":
    sys.exit(main())
