#!/usr/bin/env python3
"""Check README.md and docs/: every console example is run, or says why it is not.

A fenced block tagged console, sh, shell or bash must be preceded (last non-blank line
before the fence) by one of
  <!-- checked: demo -->          its `$ curl ...` lines run against the demo Envoy in
                                  `make demo-check` (scripts/run_demo.py --check), and
                                  their output must match the block (`...` = any text)
  <!-- not run: <reason> -->      shown, not run, and the reason says why
An unmarked block, an unknown checker or an empty reason fails, as does a `checked: demo`
block with a command the demo cannot run. Relative links must name an existing file
and, with `#anchor`, an existing heading. With `--check-config BIN`
(tests/src/bin/check-config.rs) every ```json block that is a whole plugin configuration
(an object with `auth`) must load through the filter's own parser.

The user-facing text (these pages, SECURITY.md, CHANGELOG.md, and the comments of the
manifests under istio/, envoy/ and deploy/) must not carry the project's internal history
(tracker numbers, work-log terms, commit hashes, paths outside the repository), and every
host in a URL there must be a reserved example name (RFC 2606: example.com/.org/.net,
*.example, *.test, *.invalid, localhost), a loopback address, a cluster-local service
name, or one of the real hosts the docs legitimately name (REAL_HOSTS). docs/layout.md
must match the tree: every path in its tables' first column exists, and every file
name listed in a folder's row exists under that folder. Python standard library only.

Broken pages are fed first and each must be caught (`self-test:` lines).
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_TAGS = {"console", "sh", "shell", "bash"}
CHECKERS = {"demo"}
# What the demo stack answers on (run_demo.py maps these to its real ports).
DEMO_HOSTS = ("localhost:10000", "localhost:9901")
DEMO_PROGRAMS = {"curl", "grep"}
MARK = re.compile(r"<!--\s*(checked|not run):\s*(.*?)\s*-->")
FENCE = re.compile(r"^(```+)\s*([\w-]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
# The project's internal history has no place in what users read.
INTERNAL = [
    (re.compile(r"\bissues? ?#?\d+", re.I), "a tracker issue number"),
    (re.compile(r"\bseeds? \d{3}\b", re.I), "an internal spec name (say what it is: e.g. Prefect's proxy mode)"),
    (re.compile(r"\bstops? \d+\b", re.I), "a work-log term"),
    (re.compile(r"\bthis (stop|session|issue|machine)\b", re.I), "a work-log term"),
    (re.compile(r"\b(commit|at) [0-9a-f]{7,40}\b"), "a commit hash"),
    (re.compile(r"\b(the )?\w+ branch's build\b"), "a branch name"),
    (re.compile(r"(?<![\w.])/(work|home|root|tmp)/[\w.-]+"), "a path outside the repository"),
]
URL_HOST = re.compile(r"\b[a-z][a-z0-9+.-]*://(?:[^/@\s]*@)?(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.<>{}$-]+)")
# cluster.local: the Kubernetes cluster domain and Istio's default SPIFFE trust domain.
RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost", ".svc", "cluster.local")
RESERVED_DOMAINS = ("example.com", "example.org", "example.net")
# Real hosts the docs name on purpose: sources and specifications, the crates' and the
# formats' homes, the registry `make oci` publishes to, Google's JWKS host (a fact about it).
REAL_HOSTS = ("github.com", "crates.io", "docs.rs", "semver.org", "keepachangelog.com", "ghcr.io",
              "www.rfc-editor.org", "datatracker.ietf.org", "www.envoyproxy.io", "istio.io",
              "www.googleapis.com", "pypi.org")


def pages(root):
    extra = [root / name for name in ("SECURITY.md", "CHANGELOG.md") if (root / name).exists()]
    return [root / "README.md"] + extra + sorted((root / "docs").rglob("*.md"))


def manifests(root):
    """The shipped manifests users copy: their comments are user docs too."""
    return sorted(p for d in ("istio", "envoy", "deploy") if (root / d).is_dir()
                  for p in (root / d).rglob("*") if p.suffix in (".yaml", ".yml"))


def host_allowed(host):
    host = host.lower().rstrip(".")
    if "." not in host or re.search(r"[<>{}$]", host) or host.isupper():
        return True  # a cluster-local short name (`auth`) or a placeholder (`<host>`, `REGISTRY`)
    if host in ("127.0.0.1", "[::1]") or host.startswith("127."):
        return True
    if host.endswith(RESERVED_SUFFIXES) or any(host == d or host.endswith("." + d) for d in RESERVED_DOMAINS):
        return True
    return any(host == d or host.endswith("." + d) for d in REAL_HOSTS)


def text_problems(path, root):
    """Internal terms and real third-party hosts anywhere in a user-facing file."""
    found = []
    rel = path.relative_to(root)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        for pattern, what in INTERNAL:
            m = pattern.search(line)
            if m:
                found.append(f"{rel}:{n}: {what} in user docs: {m[0]!r}")
        for m in URL_HOST.finditer(line):
            if not host_allowed(m[1]):
                found.append(f"{rel}:{n}: host {m[1]!r} is not a reserved example name (RFC 2606: "
                             "example.com, *.example) nor one of the real hosts allowed")
    return found


def layout_problems(root):
    """docs/layout.md against the tree: first-column paths exist, listed files exist."""
    layout = root / "docs" / "layout.md"
    if not layout.exists():
        return []
    found = []
    base = root
    for line in layout.read_text().splitlines():
        m = re.match(r"^## .*`([\w./-]+/)`", line)
        if m:
            base = root / m[1]
        elif line.startswith("## "):
            base = root
        if not line.startswith("| `"):
            continue
        first, _, rest = line[2:].partition(" | ")
        path = first.strip().strip("`")
        dest = base / path
        if not dest.exists():
            found.append(f"docs/layout.md: `{path}` does not exist ({dest.relative_to(root)})")
            continue
        if dest.is_dir():
            for name in re.findall(r"`([\w-]+\.(?:rs|py|yaml|yml|json|tsv|toml))`", rest):
                if not any(dest.rglob(name)):
                    found.append(f"docs/layout.md: `{name}` is not under {dest.relative_to(root)}/")
    return found


def blocks(path):
    """Yields (line number, tag, marker kind or None, marker text, body lines)."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, fence, tag = i, m[1], m[2].lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.fullmatch(prev.strip())
        yield start + 1, tag, mark[1] if mark else None, mark[2] if mark else "", lines[start + 1:j]
        i = j + 1


def commands(body):
    """The block as (command, expected output lines) pairs."""
    found = []
    for line in body:
        if line.startswith("$ "):
            found.append((line[2:], []))
        elif found:
            found[-1][1].append(line)
    return [(cmd, out) for cmd, out in found]


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#+ (.*)$", text, flags=re.M)}


def config_problems(where, body, checker):
    """A ```json block that is a whole plugin configuration must load in the filter."""
    config = whole_config(body)
    if config is None or checker is None:
        return []
    run = subprocess.run([checker, "-"], input=json.dumps(config), capture_output=True, text=True)
    if run.returncode != 0:
        return [f"{where}: the filter refuses this configuration: {(run.stdout or run.stderr).strip()}"]
    return []


def page_problems(path, root, checker=None):
    found = []
    rel = path.relative_to(root)
    for line, tag, kind, text, body in blocks(path):
        if tag == "json":
            found += config_problems(f"{rel}:{line}", body, checker)
        if tag not in CONSOLE_TAGS:
            continue
        where = f"{rel}:{line}"
        if kind is None:
            found.append(f"{where}: ```{tag} block is neither checked nor marked "
                         "(put <!-- checked: demo --> or <!-- not run: reason --> right before it)")
        elif kind == "not run" and not text:
            found.append(f"{where}: <!-- not run: --> needs a reason")
        elif kind == "checked" and text not in CHECKERS:
            found.append(f"{where}: unknown checker {text!r} (known: {sorted(CHECKERS)})")
        elif kind == "checked":
            cmds = commands(body)
            if not cmds:
                found.append(f"{where}: a checked block needs `$ ` command lines")
            for cmd, _ in cmds:
                programs = {stage.split()[0] for stage in cmd.split(" | ") if stage.split()}
                if not programs <= DEMO_PROGRAMS or not any(h in cmd for h in DEMO_HOSTS):
                    found.append(f"{where}: the demo only runs curl (| grep) on {DEMO_HOSTS}: {cmd!r}")
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for m in LINK.finditer(text):
        target = m[1]
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            found.append(f"{rel}: link {target!r}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{rel}: link {target!r}: no heading #{anchor} in {dest.relative_to(root)}")
    return found


def demo_blocks(root=ROOT):
    """(page:line, commands) of every `checked: demo` block, for run_demo.py --check."""
    return [(f"{p.relative_to(root)}:{line}", commands(body))
            for p in pages(root) for line, tag, kind, text, body in blocks(p)
            if tag in CONSOLE_TAGS and kind == "checked" and text == "demo"]


def check(root, checker=None):
    found = []
    for path in pages(root):
        found += page_problems(path, root, checker)
    for path in pages(root) + manifests(root):
        found += text_problems(path, root)
    return found + layout_problems(root)


def whole_config(body):
    try:
        config = json.loads("\n".join(body))
    except ValueError:
        return None  # a fragment (e.g. only the `jwt` block)
    return config if isinstance(config, dict) and "auth" in config else None


def configs(root):
    return sum(1 for p in pages(root) for _, tag, _, _, body in blocks(p) if tag == "json" and whole_config(body))


def self_test(checker):
    """Each broken page must be caught (the check must be able to fail)."""
    cases = [
        ("an unmarked console block", "```console\n$ curl localhost:10000/\n```\n", "neither checked nor marked"),
        ("an unmarked sh block", "text\n\n```sh\nmake bench\n```\n", "neither checked nor marked"),
        ("a marker without a reason", "<!-- not run: -->\n```console\n$ x\n```\n", "needs a reason"),
        ("an unknown checker", "<!-- checked: cluster -->\n```console\n$ kubectl get pods\n```\n", "unknown checker"),
        ("a checked command the demo cannot run", "<!-- checked: demo -->\n```console\n$ kubectl get pods\n```\n",
         "only runs curl"),
        ("a link to a missing page", "see [x](nowhere.md)\n", "does not exist"),
        ("a link to a missing heading", "# Title\n\nsee [x](#no-such-heading)\n", "no heading"),
        ("a tracker number", "As issue 13 found, ...\n", "tracker issue number"),
        ("an internal spec name", "Everything has seed 000's default.\n", "internal spec name"),
        ("a work-log term", "Tried this stop and not kept.\n", "work-log term"),
        ("a commit hash", "the module of commit a6e0e57\n", "commit hash"),
        ("a branch name", "counted on the cache branch's build\n", "branch name"),
        ("a path outside the repository", "run `python3 /work/shared/tools/x.py`\n", "outside the repository"),
        ("a real third-party host", '"issuer": "https://jwts.farcaller.net"\n', "not a reserved example name"),
        ("a real host in a manifest comment", {"istio/x.yaml": "# see https://auth.acme-corp.io/\n"},
         "not a reserved example name"),
        ("an internal term in a manifest comment", {"envoy/x.yaml": "# seed 000's defaults\n"}, "internal spec name"),
        ("a layout row naming a missing path", {"docs/layout.md": "## Files\n\n| `nowhere.rs` | x |\n"},
         "does not exist"),
        ("a layout row listing a missing file", {"docs/layout.md": "## The filter: `docs/`\n\n| `./` | `gone.rs` (x) |\n"},
         "is not under"),
    ]
    if checker:
        cases.append(("a configuration the filter refuses", '```json\n{ "auth": { "cluster": "a", "timout_ms": 5 } }\n```\n',
                      "timout_ms"))
    failed = 0
    for label, text, expected in cases:
        files = text if isinstance(text, dict) else {"README.md": text}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "docs").mkdir()
            (Path(tmp) / "README.md").write_text("")
            for name, body in files.items():
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / name).write_text(body)
            found = check(Path(tmp), checker)
        if any(expected in p for p in found):
            print(f"ok   self-test: {label} is caught")
        else:
            failed += 1
            print(f"FAIL self-test: {label} is not caught ({found})")
    return failed


def main():
    checker = None
    if sys.argv[1:2] == ["--check-config"] and len(sys.argv) == 3:
        checker = sys.argv[2]
    elif sys.argv[1:]:
        sys.exit(f"usage: {sys.argv[0]} [--check-config BIN]")
    failed = self_test(checker)
    found = check(ROOT, checker)
    for problem in found:
        print(f"FAIL {problem}")
    marked = sum(1 for p in pages(ROOT) for _, tag, kind, _, _ in blocks(p) if tag in CONSOLE_TAGS and kind)
    checked = sum(len(cmds) for _, cmds in demo_blocks())
    loaded = f", {configs(ROOT)} JSON configurations loaded by the filter" if checker else ""
    print(f"docs: {len(pages(ROOT))} pages, {marked} console blocks marked, {checked} commands run by "
          f"make demo-check{loaded}; {len(found) + failed} problems")
    return 1 if found or failed else 0


if __name__ == "__main__":
    sys.exit(main())
