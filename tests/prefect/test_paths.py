"""tests/data/paths.tsv (the path-confusion table the unit and Envoy tests share)
against the real Prefect router: a public row reaches Prefect with its exact path and
no callout; a protected row never reaches Prefect (the callout denies it, or Envoy
rejects it itself)."""
import socket
from pathlib import Path

from conftest import ROOT


def unescape(text):
    r"""`\xHH` -> one raw byte; everything else literal (tests/src/paths.rs)."""
    out, i, raw = bytearray(), 0, text.encode()
    while i < len(raw):
        if raw[i:i + 2] == b"\\x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return bytes(out)


def load(path=ROOT / "tests/data/paths.tsv", column=None):
    """paths.tsv rows; with `column` (0: the default templates, 1: tight), paths_prefix.tsv's."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if column is not None:
            cols = [cols[column]] + cols[2:]
        expected, target, *note = cols
        assert expected in ("public", "protected"), f"{path}:{number}: {expected!r}"
        rows.append((expected, unescape(target), note[0] if note else "", number))
    return rows


PREFIX_TABLE = ROOT / "tests/data/paths_prefix.tsv"


def send_raw(port, target):
    """`GET <target>` as raw bytes with `Bearer deny`; the status, or None if closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: prefect\r\nAuthorization: Bearer deny\r\n"
                     b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data[9:12])


def replay(envoy, prefect_server, auth, rows):
    failures = []
    for expected, target, note, number in rows:
        reached_before, calls_before = len(prefect_server.reached()), len(auth.snapshot())
        status = send_raw(envoy.port, target)
        reached = prefect_server.reached()[reached_before:]
        called_out = len(auth.snapshot()) > calls_before
        where = f"paths.tsv:{number} {expected} {target!r} ({note}) -> {status}"
        if expected == "public":
            want_path = target.split(b"?")[0].decode("latin-1")
            if called_out or [r["path"] for r in reached] != [want_path]:
                failures.append(f"{where}: callout {called_out}, reached Prefect as {[r['path'] for r in reached]}")
        elif reached:
            failures.append(f"{where}: REACHED PREFECT as {[r['path'] for r in reached]} (callout {called_out})")
        elif status is not None and not (called_out and status == 401) and not (400 <= status < 500):
            failures.append(f"{where}: neither denied by the callout nor rejected by Envoy")
    return failures


def test_path_table_against_the_real_router(envoy, prefect_server, auth):
    rows = load()
    assert len(rows) >= 66 and any(r[0] == "public" for r in rows)
    failures = replay(envoy, prefect_server, auth, rows)
    failures += replay(envoy, prefect_server, auth, load(PREFIX_TABLE, column=0))
    assert not failures, "\n".join(failures)


def test_path_tables_against_the_real_router_with_the_prefect_preset(envoy_preset, prefect_server, auth):
    failures = replay(envoy_preset, prefect_server, auth, load())
    failures += replay(envoy_preset, prefect_server, auth, load(PREFIX_TABLE, column=1))
    assert not failures, "\n".join(failures)
    # A route under /api/ that only ends like a public path: public with the default
    # /{prefix}/events/out, not with the preset.
    assert send_raw(envoy_preset.port, b"/api/admin/settings/events/out") == 401
