#!/usr/bin/env python3
"""bench_report.py: the table of `make bench`, from the files bench.sh left.

    bench_report.py OUT_DIR JSON_FILE|"" KEY=VALUE...

OUT_DIR holds, per run NAME (listed in runs.tsv: name, kind, loadgen exit
status, the replicas' settings): NAME.json (loadgen's summary), NAME.cpu
(loadgen's user and system CPU seconds), NAME.redis (INFO commandstats after
a CONFIG RESETSTAT; a topology run's holds every data node's, one after
the other, and they are summed), NAME.etcd.0 and NAME.etcd.1 (an etcd run's
gRPC calls before and after), NAME.m0.appI and NAME.m1.appI (each replica's /metrics
before and after); for an rss run, NAME.rss. The KEY=VALUE arguments
describe the session (connections, seconds, durable, ...).

Prints the table, the ratios with the goals beside them, and writes the same
as JSON when a file is given. Exit status 1 when any run's invariant check
failed (such a run is also left out of every median), else 0: a speed goal
never fails the bench.

Standard library only.
"""
import json
import os
import re
import statistics
import sys

# Commands the service sends only from inside its Lua scripts (acquire,
# extend, release, raise), never on their own, except lock_check's GET after
# a fenced write: counted as script-internal, so "top-level" is what
# crossed the network as a command of its own (a pipelined batch counts
# each command).
# MULTI and EXEC too: the service never sends them; a Sentinel replica
# receives each script's effects wrapped in them by the replication stream.
SCRIPT_INTERNAL = {"get", "set", "incr", "del", "pttl", "pexpire", "publish",
                   "multi", "exec"}
# The bench's own commands to Redis.
BENCH_OWN = {"info", "config|resetstat", "config"}

SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def metrics(text):
    """{(name, labels): value} of one /metrics text."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SERIES.match(line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def delta(before, after, name, labels=""):
    return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)


def redis_calls(text):
    calls = {}
    for line in text.splitlines():
        m = re.match(r"cmdstat_([^:]+):calls=(\d+)", line)
        if m:
            # Summed: a topology's data nodes come one after the other.
            calls[m.group(1)] = calls.get(m.group(1), 0) + int(m.group(2))
    return calls


def hist_max(pairs, name):
    """The longest observation of histogram `name` over the run, as the
    bucket bounds (lo, hi] that hold it, summed over the replicas; None if
    nothing was observed."""
    counts = {}
    for before, after in pairs:
        for (n, labels), v in after.items():
            if n != name + "_bucket":
                continue
            m = re.search(r'le="([^"]+)"', labels)
            if not m:
                continue
            le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
            counts[le] = counts.get(le, 0.0) + v - before.get((n, labels), 0.0)
    if not counts:
        return None
    edges = sorted(counts)
    total = counts[edges[-1]]
    if total <= 0:
        return None
    lo = 0.0
    for le in edges:
        if counts[le] >= total:
            return (lo, le)
        lo = le
    return (lo, float("inf"))


def load_run(out, name, kind, rc, settings, replicas):
    r = {"name": name, "kind": kind, "loadgen_exit": rc, "settings": settings}
    if kind == "rss":
        try:
            r["rss"] = json.loads(read(os.path.join(out, name + ".rss"), "{}"))
        except ValueError:
            r["rss"] = {}
        return r
    d = json.loads(read(os.path.join(out, name + ".json"), "{}"))
    st = d.get("status", {})
    dur = d.get("duration_s") or 0.0
    n201, n200, n410 = st.get("201", 0), st.get("200", 0), st.get("410", 0)
    n503 = st.get("503", 0)
    r["duration_s"] = dur
    r["requests"] = d.get("requests", 0)
    r["status"] = st
    r["transport_errors"] = d.get("transport_errors", 0)
    if kind == "soldout":
        good = n200 + n410
    elif kind == "healthz":
        good = st.get("200", 0)
    else:
        good = n201
    r["answers"] = good
    r["rate"] = good / dur if dur else 0.0
    r["status_503"] = n503
    r["latency_ms"] = d.get("latency_ms", {})
    if d.get("mode") == "open":
        r["offered_rate"] = d.get("target_rate")
        r["sent_late"] = d.get("sent_late")
        r["unsent"] = d.get("unsent")
    v = d.get("verify")
    r["verify"] = v
    r["valid"] = v is None or bool(v.get("ok"))
    if kind == "healthz":
        r["valid"] = True

    cpu = read(os.path.join(out, name + ".cpu")).split()
    try:
        c = float(cpu[-2]) + float(cpu[-1])
        r["loadgen_cpu_s"] = c
        r["loadgen_cpu_pct"] = 100.0 * c / dur if dur else None
        r["loadgen_us_per_req"] = 1e6 * c / r["requests"] if r["requests"] else None
    except (IndexError, ValueError):
        r["loadgen_cpu_s"] = None

    calls = redis_calls(read(os.path.join(out, name + ".redis")))
    own = sum(v for k, v in calls.items() if k in BENCH_OWN)
    total = sum(calls.values()) - own
    internal = sum(v for k, v in calls.items() if k in SCRIPT_INTERNAL)
    per = good if kind != "healthz" else 0
    r["redis_commands"] = total
    r["redis_commands_per_answer"] = total / per if per else None
    r["redis_toplevel_per_answer"] = (total - internal) / per if per else None
    r["redis_calls"] = calls

    pairs = []
    for i in range(1, replicas + 1):
        before = metrics(read(os.path.join(out, "%s.m0.app%d" % (name, i))))
        after = metrics(read(os.path.join(out, "%s.m1.app%d" % (name, i))))
        pairs.append((before, after))
    grants = []
    for before, after in pairs:
        g = delta(before, after, "couponsvc_lock_grants_total")
        if not any(n == "couponsvc_lock_grants_total" for n, _ in after):
            g = delta(before, after, "couponsvc_lock_acquisitions_total",
                      '{result="ok"}')
        if g == 0:  # atomic mode takes no lock: its claims instead
            g = delta(before, after, "couponsvc_claims_total",
                      '{outcome="claimed"}')
        grants.append(g)
    s = sum(grants)
    r["grants"] = grants
    r["grant_share"] = [g / s for g in grants] if s else None
    waits = {}
    for h in ("couponsvc_lock_wait_seconds", "couponsvc_claim_queue_seconds"):
        m = hist_max(pairs, h)
        if m is not None:
            waits[h] = m
    # [lo, hi] in seconds; hi None: above the last finite bucket.
    r["max_wait_s"] = {k: [v[0], None if v[1] == float("inf") else v[1]]
                       for k, v in waits.items()}
    batch = {}
    for before, after in pairs:
        for (n, labels), v in after.items():
            if n in ("couponsvc_claim_batch_size_sum",
                     "couponsvc_claim_batch_size_count"):
                batch[n] = batch.get(n, 0.0) + v - before.get((n, labels), 0.0)
    if batch.get("couponsvc_claim_batch_size_count"):
        r["mean_batch"] = (batch["couponsvc_claim_batch_size_sum"] /
                           batch["couponsvc_claim_batch_size_count"])
    return r


def fmt_wait(r):
    w = r.get("max_wait_s") or {}
    if not w:
        return "-"
    if any(v[1] is None for v in w.values()):
        return ">%g" % (max(v[0] for v in w.values()) * 1000)
    return "<=%g" % (max(v[1] for v in w.values()) * 1000)


def fnum(v, f="%.1f"):
    return "-" if v is None else f % v


def median(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def main():
    out, json_out = sys.argv[1], sys.argv[2]
    session = dict(a.split("=", 1) for a in sys.argv[3:])
    replicas = int(session.get("replicas", "3"))
    rounds = int(session.get("rounds", "3"))
    runs = []
    for line in read(os.path.join(out, "runs.tsv")).splitlines():
        name, kind, rc, settings = (line.split("\t") + ["", "", "", ""])[:4]
        runs.append(load_run(out, name, kind, int(rc or 0), settings, replicas))
    by = {r["name"]: r for r in runs}
    invalid = [r["name"] for r in runs if r["kind"] != "rss" and not r["valid"]]

    def rate(name):
        r = by.get(name)
        return r["rate"] if r and r["valid"] else None

    # ---- the table
    head = ["run", "answers/s", "p50", "p99", "p99.9", "max", "max wait",
            "503", "redis/claim", "top/claim", "grant share %", "lg CPU",
            "verify"]
    rows = []
    for r in runs:
        if r["kind"] in ("setup", "rss"):
            continue
        lat = r["latency_ms"]
        share = ("/".join("%.0f" % (100 * s) for s in r["grant_share"])
                 if r.get("grant_share") else "-")
        v = r["verify"]
        ver = "-" if v is None else ("ok" if v.get("ok") else "FAILED")
        rows.append([r["name"], "%.0f" % r["rate"], fnum(lat.get("p50")),
                     fnum(lat.get("p99")), fnum(lat.get("p99.9")),
                     fnum(lat.get("max"), "%.0f"), fmt_wait(r),
                     str(r["status_503"]),
                     fnum(r["redis_commands_per_answer"], "%.2f"),
                     fnum(r["redis_toplevel_per_answer"], "%.2f"), share,
                     fnum(r.get("loadgen_cpu_pct"), "%.0f%%"), ver])
    durable = session.get("durable") == "1"
    print()
    print("make bench: %s replicas behind nginx, %s connections, %s s per run, "
          "%s CPUs, %s GiB, %s" % (replicas, session.get("connections"),
                                   session.get("seconds"), session.get("cpus"),
                                   session.get("mem_gib"), session.get("os")))
    print("PostgreSQL %s" % ("durable (fsync, full_page_writes, "
                             "synchronous_commit on)" if durable else
                             "NON-DURABLE (fsync, full_page_writes, "
                             "synchronous_commit off): not the goals' setting"))
    print()
    t = [head] + rows
    w = [max(len(x[i]) for x in t) for i in range(len(head))]
    for x in t:
        print("  ".join(c.rjust(w[i]) if 0 < i < len(head) - 1 else c.ljust(w[i])
                        for i, c in enumerate(x)).rstrip())
    print()
    print("latency in ms (open loop: from the intended send time); max wait: "
          "the replicas' lock-wait and queue histograms bound the longest, ms;")
    print("redis/claim: every cmdstat_* call (script-internal included) per "
          "2xx answer; top/claim: without the commands the scripts run;")
    print("grant share: each replica's lock grants (atomic: its claims); lg "
          "CPU: the load generator's user+system time over the run, of one core")

    # ---- ratios and goals
    goals, lines = [], []

    def goal(what, value, ok, target, note=""):
        goals.append({"figure": what, "value": value, "goal": target,
                      "met": ok, "note": note})

    def ratio_rounds(a, b):
        per = []
        for i in range(1, rounds + 1):
            x, y = rate("%s-%d" % (a, i)), rate("%s-%d" % (b, i))
            if x is not None and y:
                per.append(x / y)
        return median(per), per

    hot, hot_per = ratio_rounds("hot-lock", "hot-atomic")
    goal("hot coupon claims/s, lock / atomic (median of %d rounds)" % rounds,
         hot, hot is not None and hot >= 3.0, ">= 3.0",
         "rounds: " + ", ".join("%.2f" % x for x in hot_per))
    spread, spread_per = ratio_rounds("spread-lock", "spread-atomic")
    goal("%s-coupon spread, lock / atomic (median of %d interleaved)"
         % (session.get("spread"), rounds),
         spread, spread is not None and spread >= 0.90, ">= 0.90",
         "rounds: " + ", ".join("%.2f" % x for x in spread_per))
    for name, what in (("open-2000", "2,000 claims/s offered"),
                       ("open-80pct", "80%% of lock capacity (%s claims/s "
                        "offered)" % (by.get("open-80pct", {}).get(
                            "offered_rate") or "?"))):
        r = by.get(name)
        p99 = r["latency_ms"].get("p99") if r and r["valid"] else None
        goal("hot coupon p99, open loop at " + what, p99,
             p99 is not None and p99 <= 100.0, "<= 100 ms")
    rat = []
    for i in range(1, rounds + 1):
        r = by.get("hot-lock-%d" % i)
        if r and r["valid"] and r["latency_ms"].get("p50"):
            rat.append(r["latency_ms"]["p99"] / r["latency_ms"]["p50"])
    m = median(rat)
    # The floor under that ratio: the same closed loop (same connections,
    # same balancer, same replicas) on GET /healthz, which takes no lock,
    # reads no database and answers at once. Its tail is the HTTP path's
    # alone (the scheduling of the balancer, the replicas' event loops and
    # the load generator on a saturated machine); a claim cannot have a
    # tighter one than that unless the lock's queue absorbs it.
    hzr = by.get("healthz")
    hz_ratio = (hzr["latency_ms"]["p99"] / hzr["latency_ms"]["p50"]
                if hzr and hzr["valid"] and hzr["latency_ms"].get("p50")
                else None)
    goal("hot coupon closed loop p99 / p50 (median of rounds)", m,
         m is not None and m <= 2.0, "<= 2.0",
         "same loop on /healthz: %.2f" % hz_ratio
         if hz_ratio is not None else "")
    so, hz = rate("soldout"), rate("healthz")
    sr = so / hz if so is not None and hz else None
    goal("sold-out answers/s / healthz answers/s (LB, 1 in 10 holds a claim)",
         sr, sr is not None and sr >= 0.8, ">= 0.8")
    rc = median([by[n]["redis_commands_per_answer"] for n in by
                 if n.startswith("hot-lock-") and by[n]["valid"]])
    tl = median([by[n]["redis_toplevel_per_answer"] for n in by
                 if n.startswith("hot-lock-") and by[n]["valid"]])
    goal("Redis commands per granted claim, hot coupon (median)", rc,
         rc is not None and rc <= 1.0, "<= 1.0",
         "top-level %.2f" % tl if tl is not None else "")
    rss = by.get("rss-default", {}).get("rss", {})
    mb = rss.get("rss_open_kib", 0) / 1024.0 if rss.get("rss_open_kib") else None
    goal("RSS of one instance, %s connections each after one request (MiB)"
         % session.get("rss_conns"), mb, mb is not None and mb <= 24.0,
         "<= 24 MiB",
         "idle %.1f MiB, %s bytes per connection" % (
             rss.get("rss_idle_kib", 0) / 1024.0, rss.get("per_conn_bytes"))
         if rss else "")

    print()
    print("goals (ratios from this run; a goal not met does not fail the bench;"
          " -: its runs were not run)")
    for g in goals:
        v = g["value"]
        print("  %-4s %-78s %8s  goal %s%s" % (
            "-" if v is None else "met" if g["met"] else "NOT", g["figure"],
            "-" if v is None else "%.2f" % v, g["goal"],
            "  (" + g["note"] + ")" if g["note"] else ""))

    # ---- features off vs on, and the rest
    hot_on = median([rate("hot-lock-%d" % i) for i in range(1, rounds + 1)])
    cmp_ = []

    def vs(label, a, b):
        if a is not None and b is not None:
            q = b / a if a else None
            cmp_.append({"figure": label, "off": a, "on": b, "ratio": q})
            lines.append("  %-54s %8.0f -> %8.0f   %s" % (
                label, a, b, "x%.2f" % q if q is not None else "-"))
        else:
            lines.append("  %-54s (not run: not in this build, or not in BENCH_ONLY)" % label)

    vs("waiting: poll -> pubsub, hot claims/s", rate("hot-poll"), hot_on)
    vs("combining: batch 1 -> %s, hot claims/s" % session.get("batch", "256"),
       rate("hot-batch1"), hot_on)
    vs("sold-out memo: off -> on, answers/s", rate("soldout-nomemo"), so)
    b = by.get("hot-buckets")
    nb = None
    try:
        cj = json.loads(read(os.path.join(out, "hot-buckets.coupon"), "{}"))
        nb = len(cj["buckets"]) if isinstance(cj.get("buckets"), list) else None
    except (ValueError, KeyError, TypeError):
        nb = None
    if nb:
        vs("buckets: 1 -> %d, hot claims/s" % nb, hot_on, rate("hot-buckets"))
    elif b is None:
        vs("buckets: 1 -> %s, hot claims/s" % session.get("buckets"), None,
           None)
    else:
        lines.append("  %-54s (this build ignored \"buckets\": the coupon is "
                     "unsharded)" % ("buckets: 1 -> %s" % session.get("buckets")))
    ov = by.get("overload-2x")
    if ov and ov["valid"] and hot_on:
        lines.append("  %-54s %8.0f claims/s goodput at %s offered (x%.2f of "
                     "capacity), %d answered 503" % (
                         "overload, about 2x capacity", ov["rate"],
                         ov.get("offered_rate"), ov["rate"] / hot_on,
                         ov["status_503"]))
    r32 = by.get("rss-32k", {}).get("rss", {})
    if r32.get("rss_open_kib"):
        lines.append("  %-54s %8.1f MiB (default limit: %s MiB)" % (
            "RSS at 32 KiB per connection (the old limit)",
            r32["rss_open_kib"] / 1024.0,
            "%.1f" % mb if mb is not None else "-"))
    # ---- the lock backends side by side
    backends = []
    blines = []
    for name, what in (("hot-single", "Redis, one node"),
                       ("hot-sentinel", "Redis Sentinel (master + replica)"),
                       ("hot-redlock3", "Redlock, 3 nodes"),
                       ("hot-redlock5", "Redlock, 5 nodes"),
                       ("hot-etcd", "etcd, 3 members")):
        r = by.get(name)
        if not r:
            blines.append("  %-13s %-34s (not run)" % (name, what))
            continue
        lat = r["latency_ms"]
        e = {"run": name, "backend": what, "claims_per_s": r["rate"],
             "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
             "valid": r["valid"]}
        if name == "hot-etcd":
            try:
                calls = (int(read(os.path.join(out, name + ".etcd.1"), "0")) -
                         int(read(os.path.join(out, name + ".etcd.0"), "0")))
            except ValueError:
                calls = None
            e["etcd_calls_per_claim"] = (calls / r["answers"]
                                         if calls is not None and r["answers"]
                                         else None)
            cost = "%s etcd calls" % fnum(e["etcd_calls_per_claim"], "%.2f")
        else:
            e["redis_commands_per_claim"] = r["redis_commands_per_answer"]
            e["redis_toplevel_per_claim"] = r["redis_toplevel_per_answer"]
            cost = "%s Redis commands (%s top-level)" % (
                fnum(r["redis_commands_per_answer"], "%.2f"),
                fnum(r["redis_toplevel_per_answer"], "%.2f"))
        backends.append(e)
        blines.append("  %-13s %-34s %8.0f claims/s  p50 %6s  p99 %6s ms  %s "
                      "per claim%s" % (name, what, r["rate"],
                                       fnum(lat.get("p50")),
                                       fnum(lat.get("p99")), cost,
                                       "" if r["valid"] else
                                       "  INVARIANT CHECK FAILED"))
    print()
    print("lock backends (hot coupon, closed loop, lock mode; Redis commands "
          "summed over every data node, a Sentinel replica's replicated "
          "writes included)")
    for line in blines:
        print(line)

    print()
    print("each feature off, then on (one run off; on: the median above)")
    for line in lines:
        print(line)
    if invalid:
        print()
        print("INVARIANT CHECK FAILED in: %s (left out of every figure above)"
              % ", ".join(invalid))
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"session": session, "runs": runs, "goals": goals,
                       "features": cmp_, "lock_backends": backends,
                       "invalid_runs": invalid,
                       "invariants_ok": not invalid}, f, indent=1,
                      default=lambda o: None)
            f.write("\n")
        print()
        print("JSON: %s" % json_out)
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
