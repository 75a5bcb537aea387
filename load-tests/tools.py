#!/usr/bin/env python3
"""Helpers for load-tests/run.sh (standard library only).

  tools.py freeport                      print a free TCP port on 127.0.0.1
  tools.py wait HOST:PORT PATH SECONDS   poll GET PATH until it answers 200 (exit 1 on timeout)
  tools.py rss PID                       VmRSS in kB of PID plus its direct children (nginx workers)
  tools.py smaps PID                     one process's resident memory by kind (kB): anonymous (thread
                                         stacks, the rest), file-backed by file, from /proc/PID/smaps
  tools.py cpu PID                       utime+stime in seconds of PID plus its direct children
  tools.py cputhreads PID                utime+stime in seconds of PID's threads by group, one
                                         "group seconds" line each: workers (actix-rt*), system (the
                                         main thread: the actix system, the usage recorder), sled
                                         (sled-io-*, log flusher), other
  tools.py hold HOST:PORT N BODYFILE [KEY]  open N keep-alive connections, send one POST on each, read the
                                         answer, print "held N", keep them open until stdin closes
  tools.py metric HOST:PORT NAME [SKIP]  sum of a Prometheus metric's samples from /metrics, leaving out
                                         samples whose labels contain SKIP
  tools.py send HOST:PORT N BODYFILE [KEY]  N sequential POSTs on one keep-alive connection; prints
                                         how many got 200
  tools.py mkkey HOST:PORT ADMIN_TOKEN JSON  POST JSON to /admin/keys, print the new key
  tools.py cgtop N < ANNOTATE_OUTPUT     the N costliest functions of callgrind_annotate's output, runtime
                                         plumbing (tokio, actix-service, futures, std) left out, one line each
  tools.py table RESULTS.tsv             the Markdown tables (medians over runs) from run.sh's raw results
  tools.py cputable RAW.tsv SYSTEM...    cpu.sh's table: medians over rounds of the CPU a request, by
                                         thread group, and the ratio to the first system within each round
  tools.py latency RAW.tsv SYSTEM...     latency.sh's table: medians over rounds, added latency and the
                                         ratios to the first system taken within each round
"""
import os
import re
import socket
import statistics
import sys
import time
from collections import defaultdict

CLK_TCK = os.sysconf("SC_CLK_TCK")


def freeport():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def split_addr(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def read_response(sock, buf=b""):
    """Reads one HTTP/1.1 response (content-length or chunked); returns (status, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before headers")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(rest) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-body")
            rest += data
        return status, rest[n:]
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while not (rest.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in rest):
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed mid-chunks")
            rest += data
        return status, b""
    return status, rest


def wait(addr, path, seconds):
    host, port = split_addr(addr)
    deadline = time.monotonic() + float(seconds)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.sendall(req)
                status, _ = read_response(s)
                if status == 200:
                    return 0
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.05)
    print(f"timeout waiting for http://{addr}{path}", file=sys.stderr)
    return 1


def metric(addr, name, skip=None):
    host, port = split_addr(addr)
    req = f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    total = 0.0
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(req)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        text = data.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace")
        for line in text.splitlines():
            if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
                continue
            if skip and skip in line:
                continue
            total += float(line.rsplit(None, 1)[1])
    except (OSError, IndexError, ValueError):
        pass
    print(int(total))


def chat_request(host, port, bodyfile, key=""):
    """The raw keep-alive POST carrying bodyfile (and the key, when given), to /v1/chat/completions or
    the route in SEND_PATH (`/v1/messages`, `/v1/responses`)."""
    with open(bodyfile, "rb") as f:
        body = f.read()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    path = os.environ.get("SEND_PATH", "/v1/chat/completions")
    # SY_HEADERS="Name: value|Name: value": what a peer gateway needs on every request (run.sh sets it).
    extra = "".join(f"{h.strip()}\r\n" for h in os.environ.get("SY_HEADERS", "").split("|") if h.strip())
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def send(addr, n, bodyfile, key=""):
    host, port = split_addr(addr)
    req = chat_request(host, port, bodyfile, key)
    ok = 0
    with socket.create_connection((host, port), timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(int(n)):
            s.sendall(req)
            status, _ = read_response(s)
            ok += status == 200
    print(ok)
    return 0


def mkkey(addr, token, body):
    import json
    host, port = split_addr(addr)
    data = body.encode()
    req = (
        f"POST /admin/keys HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(req)
        raw = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if status != 201 and status != 200:
        print(f"POST /admin/keys: {status} {payload[:300]!r}", file=sys.stderr)
        return 1
    print(json.loads(payload)["key"])
    return 0


PLUMBING = re.compile(
    r"^(<?(tokio|actix_service|actix_server|actix_rt|futures_util|futures_core|core::future|core::pin|std::|core::ops"
    r"|alloc::boxed|<alloc::boxed|tracing::instrument|<tracing::instrument)|\(below main\)|__libc_start|clone$|start_thread"
    r"|<core::pin|<core::future|<std::|<futures|<tokio|<actix_service|<actix_server)"
)


def cgtop(n):
    rows, seen = [], {}
    for line in sys.stdin:
        m = re.match(r"^\s*([0-9,]+) \(\s*([0-9.]+)%\)\s+(.*)$", line.rstrip("\n"))
        if not m or "PROGRAM TOTALS" in line:
            continue
        count, pct, rest = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        rest = re.sub(r" \[[^\]]*\]$", "", rest)  # the object file
        # "FILE:FUNCTION", or a bare function name; a line with a path and no function is skipped.
        file, sep, after = rest.partition(":")
        is_path = re.match(r"^[^ ]*?\.(rs|c|S|h)$", file) or rest.startswith(("/", "./", "src/", "???"))
        func = after if (sep and is_path) else ("" if is_path else rest)
        if PLUMBING.match(func) or func in ("???", ""):
            continue
        if func in seen:
            continue
        seen[func] = True
        rows.append((count, pct, func))
    for count, pct, func in rows[: int(n)]:
        print(f"{pct:>6}%  {count:>13,}  {func[:150]}")
    return 0


def children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def smaps(pid):
    """Resident kB of one process by kind: `key value` lines (memory.sh parses them).

    A thread's stack is the mapping that holds the stack pointer /proc/PID/task/TID/syscall shows for
    it (needs the right to ptrace the process, as its owner or root).
    """
    sps = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            if len(fields) >= 3 and fields[-2].startswith("0x"):
                sps.append(int(fields[-2], 16))
        except OSError:
            pass
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
                status[k] = int(v.split()[0])
    maps = []  # (start, end, perms, path, rss_kb)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = re.match(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$", line)
            if head:
                maps.append([int(head[1], 16), int(head[2], 16), head[3], head[4].strip(), 0])
            elif line.startswith("Rss:") and maps:
                maps[-1][4] = int(line.split()[1])
    stacks = stack_n = other_anon = 0
    files = defaultdict(int)
    for start, end, perms, path, rss in maps:
        if path and not path.startswith("["):
            files[os.path.basename(path)] += rss
        elif path == "[stack]" or any(start <= sp < end for sp in sps):
            stacks += rss
            stack_n += 1
        else:
            other_anon += rss
    for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
        print(f"{k} {status.get(k, 0)}")
    print(f"anon_thread_stacks {stacks}")
    print(f"anon_thread_stack_mappings {stack_n}")
    print(f"anon_other {other_anon}")
    for name, rss in sorted(files.items(), key=lambda kv: -kv[1]):
        if rss:
            print(f"file:{name} {rss}")


def cpu_ticks(pid, tid=None):
    """utime+stime in clock ticks of a process, or of one of its threads."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after the command: state(0) ppid(1) ... utime(11) stime(12)
    return int(fields[11]) + int(fields[12])


def rss(pid):
    pid = int(pid)
    print(sum(rss_kb(p) for p in [pid] + children(pid)))


def cpu(pid):
    pid = int(pid)
    print(f"{sum(cpu_ticks(p) for p in [pid] + children(pid)) / CLK_TCK:.2f}")


def thread_group(comm):
    if comm.startswith("actix-rt"):
        return "workers"
    if comm == "switchyard":
        return "system"
    if comm.startswith("sled") or comm == "log flusher":
        return "sled"
    return "other"


def cputhreads(pid):
    groups = defaultdict(int)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            groups[thread_group(comm)] += cpu_ticks(pid, tid)
        except FileNotFoundError:
            continue   # the thread ended between the listing and the read
    for g in ("workers", "system", "sled", "other"):
        print(f"{g} {groups[g] / CLK_TCK:.2f}")
    return 0


def cpu_table(raw, systems):
    """cpu.sh's table from its raw rows: round, system, requests, seconds, then seconds by group."""
    rows = defaultdict(dict)
    for line in open(raw):
        f = line.rstrip("\n").split("\t")
        rows[int(f[0])][f[1]] = (int(f[2]), float(f[3]), [float(x) for x in f[4:8]], float(f[8]))
    def us(r, i=None):
        n, _, groups, cpu = r
        return (cpu if i is None else groups[i]) / n * 1e6
    med = statistics.median
    print("| system | requests/s | CPU µs a request | workers | system thread | sled's threads | other | CPU a request / the first system's, per round: median (min-max) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = systems[0]
    for s in systems:
        mine = [rows[r][s] for r in sorted(rows) if s in rows[r]]
        if not mine:
            continue
        ratios = [us(rows[r][s]) / us(rows[r][base]) for r in sorted(rows) if s in rows[r] and base in rows[r]]
        rps = med(n / secs for n, secs, _, _ in mine)
        cells = [f"{med(us(r, i) for r in mine):.1f}" for i in range(4)]
        ratio = "1.00x" if s == base else f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"| {s} | {rps:,.0f} | {med(us(r) for r in mine):.1f} | {' | '.join(cells)} | {ratio} |")
    return 0


def hold(addr, n, bodyfile, key=""):
    host, port = split_addr(addr)
    req = chat_request(host, port, bodyfile, key)
    socks, failed = [], 0
    for _ in range(int(n)):
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.sendall(req)
            status, _ = read_response(s)
            if status != 200:
                failed += 1
            socks.append(s)
        except OSError:
            failed += 1
    print(f"held {len(socks)} non200 {failed}", flush=True)
    sys.stdin.read()  # until run.sh closes our stdin
    for s in socks:
        s.close()
    return 0


# ---------------------------------------------------------------------------------------------------
# Tables

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_ms(us):
    return "-" if us is None else f"{us / 1000:.3f}"


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(path):
    # rows: run  system  key  value
    raw = defaultdict(lambda: defaultdict(dict))  # raw[run][system][key] = float
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4 or parts[0] == "run":
                continue
            run, system, key, value = parts
            try:
                raw[run][system][key] = float(value)
            except ValueError:
                pass
    runs = sorted(raw)
    systems = []
    for run in runs:
        for s in raw[run]:
            if s not in systems:
                systems.append(s)

    def per_run(system, fn):
        out = []
        for run in runs:
            r = raw[run]
            try:
                out.append(fn(r, r[system]))
            except (KeyError, ZeroDivisionError, TypeError):
                out.append(None)
        return out

    def m(system, key):
        return med(per_run(system, lambda r, s: s[key]))

    def added(system, key):
        return med(per_run(system, lambda r, s: s[key] - r["direct"][key]))

    def rps(s):
        return s["thr_requests"] / (s["thr_duration_us"] / 1e6)

    labels = {
        "direct": "direct to mock",
        "nginx": "nginx (reverse proxy, the floor)",
        "noveum-ai-gateway": "noveum-ai-gateway (Rust peer)",
        "crabllm": "crabllm (Rust peer)",
        "default-w2": "switchyard default config (usage.durable: true), 2 workers",
        "bare-w1": "switchyard bare (usage.durable: false), 1 worker",
        "bare-w2": "switchyard bare (usage.durable: false), 2 workers",
        "full-w1": "switchyard full*, 1 worker",
        "full-w2": "switchyard full*, 2 workers",
        "fullnd-w1": "switchyard full* not durable (usage.durable: false), 1 worker",
        "fullnc-w1": "switchyard full* without credits, 1 worker",
    }
    main = [s for s in labels if s in systems]
    print(f"Runs: {len(runs)} (each cell is the median over runs; added = system minus direct-to-mock in the same run)\n")
    print("Non-streaming, small chat body. Latency at 1 connection in ms; rps at 50 connections; RSS in MB (nginx: "
          "master + workers), idle and with 1,000 open keep-alive connections, both on fresh processes; CPU = seconds "
          "of CPU the system used during the 50-connection run (and per request).\n")
    print("| system | p50 | p99 | added p50 | added p99 | rps@50 | ratio to nginx | RSS idle | RSS @1k conns | CPU s | CPU µs/req |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in main:
        r = med(per_run(s, lambda r, x: rps(x)))
        ratio = med(per_run(s, lambda r, x: rps(x) / rps(r["nginx"])))
        cpu_s = m(s, "thr_cpu_s")
        cpu_req = med(per_run(s, lambda r, x: x["thr_cpu_s"] / x["thr_requests"] * 1e6))
        rss_idle = m(s, "rss_idle_kb")
        rss_1k = m(s, "rss_1k_kb")
        print(
            f"| {labels[s]} | {fmt_ms(m(s, 'lat_p50'))} | {fmt_ms(m(s, 'lat_p99'))} | "
            f"{'—' if s == 'direct' else fmt_ms(added(s, 'lat_p50'))} | "
            f"{'—' if s == 'direct' else fmt_ms(added(s, 'lat_p99'))} | {fmt(r, ',.0f')} | "
            f"{fmt(ratio, '.2f')} | {fmt(None if rss_idle is None else rss_idle / 1024, '.1f')} | "
            f"{fmt(None if rss_1k is None else rss_1k / 1024, '.1f')} | {fmt(cpu_s, '.2f')} | {fmt(cpu_req, '.1f')} |"
        )
    print("\n\\* full = `auth.required: true` with a gateway API key on every request, a tier with request, "
          "LLM-request and token limits (never reached, but checked and counted) and metered credits (reserve "
          "and settle per call), `usage.durable: true`, and sticky sessions on (requests carry 1,000 distinct "
          "X-Session-Id values).\n")

    print("Streaming (`\"stream\": true`, 8 SSE events), 1 connection, reused: time to last chunk in ms.\n")
    print("| system | p50 | p99 | added p50 | added p99 |")
    print("| --- | --- | --- | --- | --- |")
    for s in main:
        print(
            f"| {labels[s]} | {fmt_ms(m(s, 'stream_p50'))} | {fmt_ms(m(s, 'stream_p99'))} | "
            f"{'—' if s == 'direct' else fmt_ms(added(s, 'stream_p50'))} | "
            f"{'—' if s == 'direct' else fmt_ms(added(s, 'stream_p99'))} |"
        )

    if any("sthr_requests" in raw[run].get(x, {}) for run in runs for x in main):
        print("\nStreaming at 50 connections (8 SSE events each; wrk times the whole body). Latency in ms.\n")
        print("| system | rps@50 streaming | p50 | p99 | non-2xx | socket errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for s in main:
            r = med(per_run(s, lambda r, x: x["sthr_requests"] / (x["sthr_duration_us"] / 1e6)))
            print(f"| {labels[s]} | {fmt(r, ',.0f')} | {fmt_ms(m(s, 'sthr_p50'))} | {fmt_ms(m(s, 'sthr_p99'))} | "
                  f"{fmt(m(s, 'sthr_non2xx'), '.0f')} | {fmt(m(s, 'sthr_errors'), '.0f')} |")

    targets(raw, runs, systems, labels, per_run, m)

    fo_labels = {
        "fo-steady": "2 healthy profiles (steady state)",
        "fo-30": "one profile answers 30% 500s (default cooldown 1s..5m)",
        "fo-30-fast": "one profile answers 30% 500s (cooldown 1ms, breaker off: every fault fails over)",
    }
    fo = [s for s in fo_labels if s in systems]
    if fo:
        print("\nFailover, 50 connections, non-streaming, round_robin over two profiles. Latency in ms.\n")
        print("| config | rps@50 | p50 | p99 | p99 vs steady | non-2xx | socket errors | upstream 500s seen |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in fo:
            r = med(per_run(s, lambda r, x: rps(x)))
            vs = med(per_run(s, lambda r, x: x["thr_p99"] / r["fo-steady"]["thr_p99"]))
            print(
                f"| {fo_labels[s]} | {fmt(r, ',.0f')} | {fmt_ms(m(s, 'thr_p50'))} | {fmt_ms(m(s, 'thr_p99'))} | "
                f"{fmt(vs, '.2f')}x | {fmt(m(s, 'thr_non2xx'), '.0f')} | {fmt(m(s, 'thr_errors'), '.0f')} | "
                f"{fmt(m(s, 'faults_seen'), '.0f')} |"
            )

    pairs = [("full-w1", "bare-w1"), ("full-w2", "bare-w2"), ("fullnd-w1", "bare-w1"), ("fullnc-w1", "bare-w1")]
    pairs = [(a, b) for a, b in pairs if a in systems and b in systems]
    if pairs:
        print("\nCost of \"full\" relative to bare (target <= 1.3x):\n")
        print("| variant | added p50 full/bare | CPU µs/req full/bare | rps bare/full |")
        print("| --- | --- | --- | --- |")
        for a, b in pairs:
            lat = med(per_run(a, lambda r, x: (x["lat_p50"] - r["direct"]["lat_p50"])
                              / (r[b]["lat_p50"] - r["direct"]["lat_p50"])))
            cpu_r = med(per_run(a, lambda r, x: (x["thr_cpu_s"] / x["thr_requests"])
                                / (r[b]["thr_cpu_s"] / r[b]["thr_requests"])))
            rps_r = med(per_run(a, lambda r, x: rps(r[b]) / rps(x)))
            print(f"| {labels[a]} | {fmt(lat, '.2f')}x | {fmt(cpu_r, '.2f')}x | {fmt(rps_r, '.2f')}x |")

    print("\nMemory after load, and latency during the 50-connection run. \"RSS after load\" is read after each run's "
          "load; \"served\" is how many requests the process had answered by then (RSS that grows with it is "
          "retained per request, not per connection).\n")
    print("| system | p50@50 (ms) | p99@50 (ms) | non-2xx | socket errors | served | RSS after load | RSS @1k conns after load | conns held (fresh / loaded) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in main:
        after = m(s, "rss_after_load_kb")
        after_1k = m(s, "rss_1k_loaded_kb")
        print(f"| {labels[s]} | {fmt_ms(m(s, 'thr_p50'))} | {fmt_ms(m(s, 'thr_p99'))} | "
              f"{fmt(m(s, 'thr_non2xx'), '.0f')} | {fmt(m(s, 'thr_errors'), '.0f')} | "
              f"{fmt(m(s, 'served_before'), ',.0f')} | "
              f"{fmt(None if after is None else after / 1024, '.1f')} | "
              f"{fmt(None if after_1k is None else after_1k / 1024, '.1f')} | "
              f"{fmt(m(s, 'rss_1k_held'), '.0f')} / {fmt(m(s, 'rss_1k_loaded_held'), '.0f')} |")
    return 0


PEERS = ["noveum-ai-gateway", "crabllm"]


def targets(raw, runs, systems, labels, per_run, m):
    """Every target of issue 14 as a ratio measured within each run (median over runs), met or not."""
    d = "default-w2"
    if d not in systems:
        return
    peers = [p for p in PEERS if p in systems]

    def rate(x, prefix):
        return x[f"{prefix}_requests"] / (x[f"{prefix}_duration_us"] / 1e6)

    def added(r, sys, key):
        return r[sys][key] - r["direct"][key]

    def best_peer_added(r, key):
        vals = [added(r, p, key) for p in peers if key in r.get(p, {})]
        return min(vals) if vals else None

    def best_peer_rate(r, prefix):
        vals = [rate(r[p], prefix) for p in peers if f"{prefix}_requests" in r.get(p, {})]
        return max(vals) if vals else None

    rows = []

    def row(name, fn, op, limit):
        v = med(per_run(d, lambda r, x: fn(r, x)))
        met = "-" if v is None else ("**met**" if (v <= limit if op == "<=" else v >= limit) else "**not met**")
        rows.append(f"| {name} | {fmt(v, '.2f')}x | {op} {limit} | {met} |")

    row("1. default added p50 c=1 / not durable (bare, 2 workers)",
        lambda r, x: added(r, d, "lat_p50") / added(r, "bare-w2", "lat_p50"), "<=", 1.15)
    if peers:
        for key, what in [("lat_p50", "p50"), ("lat_p99", "p99"), ("stream_p50", "streaming p50"),
                          ("stream_p99", "streaming p99")]:
            row(f"2. default added {what} c=1 / best peer's",
                lambda r, x, key=key: added(r, d, key) / best_peer_added(r, key), "<=", 0.75)
        row("3. default rps c=50 / best peer's", lambda r, x: rate(x, "thr") / best_peer_rate(r, "thr"), ">=", 1.5)
    row("3. default rps c=50 / nginx", lambda r, x: rate(x, "thr") / rate(r["nginx"], "thr"), ">=", 0.6)
    if peers:
        row("3. default streaming rps c=50 / best peer's",
            lambda r, x: rate(x, "sthr") / best_peer_rate(r, "sthr"), ">=", 2.0)
    row("3. default streaming p99 c=50 / non-streaming p99 c=50", lambda r, x: x["sthr_p99"] / x["thr_p99"], "<=", 2.0)
    if "full-w2" in systems:
        row("4. full (2 workers) CPU per request / default's",
            lambda r, x: (r["full-w2"]["thr_cpu_s"] / r["full-w2"]["thr_requests"])
            / (x["thr_cpu_s"] / x["thr_requests"]), "<=", 1.3)
        row("4. full (2 workers) added p50 c=1 / default's",
            lambda r, x: added(r, "full-w2", "lat_p50") / added(r, d, "lat_p50"), "<=", 1.3)
    for route in ("messages", "responses"):
        if not any(f"lat_{route}_p50" in raw[run].get(d, {}) for run in runs):
            continue
        row(f"6. default /v1/{route} added p50 c=1 / chat's",
            lambda r, x, route=route: added(r, d, f"lat_{route}_p50") / added(r, d, "lat_p50"), "<=", 1.1)
        row(f"6. default /v1/{route} CPU per request c=50 / chat's",
            lambda r, x, route=route: (x[f"thr_{route}_cpu_s"] / x[f"thr_{route}_requests"])
            / (x["thr_cpu_s"] / x["thr_requests"]), "<=", 1.1)
    six = [r for r in rows if r.startswith("| 6.")]
    rows = [r for r in rows if not r.startswith("| 6.")]
    print("\nTargets of issue 14, each a ratio within one run (median over runs). Best peer = the better of "
          + (", ".join(peers) if peers else "no peer (none ran)") + ".\n")
    print("| target | measured | wanted | verdict |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(r)
    rss = m(d, "rss_after_load_kb")
    served = m(d, "served_before")
    verdict = "-" if rss is None else ("**met**" if rss / 1024 <= 25 and (served or 0) >= 500_000 else
                                       ("**not met**" if rss / 1024 > 25 else "not shown (fewer than 500,000 served)"))
    print(f"| 5. default RSS after load, MB (served {fmt(served, ',.0f')}) | {fmt(None if rss is None else rss / 1024, '.1f')} "
          f"| <= 25 after 500,000 | {verdict} |")
    for r in six or ["| 6. /v1/messages and /v1/responses pass-through / chat | - | <= 1.1 | not measured in this run |"]:
        print(r)
    redis_mode(raw, runs, systems, per_run, m)


def redis_mode(raw, runs, systems, per_run, m):
    """Issue 18's benchmark: redis mode against local mode at 1 connection, and the 3-replica fleet."""
    if "redis-w2" not in systems:
        return
    print("\nRedis mode (`state.backend: redis`, a local redis-server), each beside its local twin in the same run. "
          "Redis round trip = redis-benchmark p50 at 1 connection (its resolution is ~0.01 ms). Latency in ms.\n")
    print("| system | added p50 c=1 | local twin's | redis minus local | Redis round trip (PING / script) | "
          "wanted: at most one round trip + 0.05 | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ping, script = m("redis", "rtt_ping_p50"), m("redis", "rtt_eval_p50")
    rtt = None if ping is None else max(ping, script or 0)
    for sys, twin, what in [("redis-w2", "default-w2", "default config, 2 workers"),
                            ("fullr-w2", "full-w2", "full*, 2 workers")]:
        if sys not in systems:
            continue
        a = med(per_run(sys, lambda r, x: x["lat_p50"] - r["direct"]["lat_p50"]))
        b = med(per_run(twin, lambda r, x: x["lat_p50"] - r["direct"]["lat_p50"]))
        diff = med(per_run(sys, lambda r, x, twin=twin: x["lat_p50"] - r[twin]["lat_p50"]))
        ok = "-" if diff is None or rtt is None else ("**met**" if diff <= rtt + 50 else "**not met**")
        print(f"| {what} | {fmt_ms(a)} | {fmt_ms(b)} | {fmt_ms(diff)} | {fmt_ms(ping)} / {fmt_ms(script)} | "
              f"<= {fmt_ms(None if rtt is None else rtt + 50)} | {ok} |")
    if "fleet" in systems:
        rps = med(per_run("fleet", lambda r, x: x["thr_requests"] / (x["thr_duration_us"] / 1e6)))
        one = med(per_run("full-w2", lambda r, x: x["thr_requests"] / (x["thr_duration_us"] / 1e6)))
        cpu = med(per_run("fleet", lambda r, x: x["thr_cpu_s"] / x["thr_requests"] * 1e6))
        print(f"\n3 replicas (full*, redis, 1 worker each) behind nginx on this box, 50 connections: "
              f"{fmt(rps, ',.0f')} requests/s (one local full* replica with 2 workers: {fmt(one, ',.0f')}); "
              f"replicas' CPU {fmt(cpu, '.1f')} µs per request; non-2xx {fmt(m('fleet', 'thr_non2xx'), '.0f')}, "
              f"socket errors {fmt(m('fleet', 'thr_errors'), '.0f')}.")


def latency(raw, *systems):
    """latency.sh's rows (round, name, route, p50 µs, p99 µs) -> one Markdown table."""
    points = {}
    for line in open(raw):
        rnd, name, route, p50, p99 = line.rstrip("\n").split("\t")
        points[(int(rnd), name, route)] = (float(p50), float(p99))
    rounds = sorted({k[0] for k in points})

    def route_of(sys_name):
        return sys_name.split(":", 1)[1] if ":" in sys_name else "chat"

    def added(rnd, sys_name, i):
        own = points.get((rnd, sys_name, route_of(sys_name)))
        direct = points.get((rnd, "direct", route_of(sys_name)))
        return None if own is None or direct is None else own[i] - direct[i]

    base = systems[0]
    print("| system | p50 | p99 | added p50 | added p99 | added p50 / first's: median (min-max) | "
          "added p99 / first's: median | rounds where p50's ratio <= 1.1 / 1.15 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    names = [f"direct:{r}" if r != "chat" else "direct" for r in
             dict.fromkeys(route_of(s) for s in systems)] + list(systems)
    for name in names:
        is_direct = name.startswith("direct")
        key_name, route = ("direct", route_of(name)) if is_direct else (name, route_of(name))
        p50 = med(points.get((r, key_name, route), (None, None))[0] for r in rounds)
        p99 = med(points.get((r, key_name, route), (None, None))[1] for r in rounds)
        if is_direct:
            print(f"| {name} | {fmt_ms(p50)} | {fmt_ms(p99)} | - | - | - | - | - |")
            continue
        a50 = [added(r, name, 0) for r in rounds]
        a99 = [added(r, name, 1) for r in rounds]
        ratios = [a / b for a, b in zip(a50, [added(r, base, 0) for r in rounds])
                  if a is not None and b]
        ratios99 = [a / b for a, b in zip(a99, [added(r, base, 1) for r in rounds])
                    if a is not None and b]
        spread = f"{med(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
        within = (f"{sum(x <= 1.1 for x in ratios)} / {sum(x <= 1.15 for x in ratios)} of {len(ratios)}"
                  if ratios else "-")
        r99 = f"{med(ratios99):.2f}x" if ratios99 else "-"
        print(f"| {name} | {fmt_ms(p50)} | {fmt_ms(p99)} | {fmt_ms(med(a50))} | {fmt_ms(med(a99))} | "
              f"{spread} | {r99} | {within} |")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "freeport":
        freeport()
        return 0
    if cmd == "wait":
        return wait(*args)
    if cmd == "rss":
        rss(*args)
        return 0
    if cmd == "smaps":
        smaps(int(args[0]))
        return 0
    if cmd == "cpu":
        cpu(*args)
        return 0
    if cmd == "cputhreads":
        return cputhreads(int(argv[2]))
    if cmd == "cputable":
        return cpu_table(argv[2], argv[3:])
    if cmd == "hold":
        return hold(*args)
    if cmd == "cgtop":
        return cgtop(*args)
    if cmd == "send":
        return send(*args)
    if cmd == "mkkey":
        return mkkey(*args)
    if cmd == "metric":
        metric(*args)
        return 0
    if cmd == "table":
        return table(*args)
    if cmd == "latency":
        return latency(*args)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
