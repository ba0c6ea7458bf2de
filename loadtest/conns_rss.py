#!/usr/bin/env python3
"""conns_rss.py: the resident memory one couponsvc process keeps per open
connection.

    conns_rss.py PORT PID [N]

Reads the process's VmRSS, opens N (1000) connections to 127.0.0.1:PORT,
sends one GET /healthz on each and reads its answer (so that every
connection has had a request, and libmicrohttpd has used, and zeroed, its
memory pool), keeps all of them open and idle, reads VmRSS again, then
closes them. Prints one JSON object: rss_idle_kib, rss_open_kib, conns
(how many got a 200), per_conn_bytes.

Standard library only; every socket has a timeout, so it ends.
"""
import json
import resource
import socket
import sys
import time


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for pid %d" % pid)


def main():
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    time.sleep(0.5)
    idle = rss_kib(pid)
    req = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    socks, ok = [], 0
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            s.sendall(req)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            head, _, body = got.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            while len(body) < length:
                chunk = s.recv(4096)
                if not chunk:
                    break
                body += chunk
            if got.startswith(b"HTTP/1.1 200"):
                ok += 1
        time.sleep(1.0)  # let the event loops settle
        opened = rss_kib(pid)
    finally:
        for s in socks:
            s.close()
    print(json.dumps({
        "rss_idle_kib": idle,
        "rss_open_kib": opened,
        "conns": ok,
        "per_conn_bytes": round((opened - idle) * 1024 / max(ok, 1)),
    }))
    return 0 if ok == n else 1


if __name__ == "__main__":
    sys.exit(main())
