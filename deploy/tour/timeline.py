#!/usr/bin/env python3
"""timeline.py: the guided tour's timeline, built from the service's own log
lines (service/log.c's text format) and the tour's marks.

    timeline.py --t0 2026-12-02T00:30:01.123Z --coupons 'sh-17|bg-17'
                [--max 40] [--name app1=R1 ...] LOG...

Every log line reads

    2026-12-02T00:30:01.412Z INFO instance=tour-A event=lock.acquired k=v k="v w"

A line is kept if it is at or after --t0 and names one of the coupons
(coupon=, resource=, or key=coupon:{ID}:lock; ID#b for a bucket), or if it
is one of the events that name none but belong to the story (a watchdog
round that failed, the tour's own marks: instance=tour event=tour.mark).
Each is printed as "t=SECONDS LETTER what happened", the letter being the
instance id's last part after '-' (tour-A -> A) unless --name maps it.
Consecutive repeats of one line are folded ("x5"). With --max, the middle of
a long timeline is cut, its first and last lines kept.

Only the standard library: it runs on a stock Debian 12.
"""
import argparse
import datetime as dt
import re
import sys

LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z (\w+) (.*)$")
KV = re.compile(r'(\w[\w.]*)=("((?:[^"\\]|\\.)*)"|\S+)')


def parse_ts(s):
    s = s.rstrip("Z")
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=dt.timezone.utc).timestamp()


def fields(rest):
    out = {}
    for m in KV.finditer(rest):
        out[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


def coupon_of(f):
    if "coupon" in f:
        return f["coupon"]
    if "resource" in f:
        return f["resource"].split("#")[0]
    k = f.get("key", "")
    m = re.match(r"coupon:\{([^}]*)\}:", k)
    return m.group(1).split("#")[0] if m else None


def fence_txt(v):
    return "none" if v in (None, "-1") else v


def short_user(u, coupon):
    """The tour names its users USER-COUPON (unique per coupon, readable
    alone); the load generator names them uPID-TIME-I. Both shortened."""
    if u is None:
        return "?"
    if coupon and u.endswith("-" + coupon):
        return u[:-len(coupon) - 1]
    m = re.match(r"^u\d+-\d+-(\d+)$", u)
    return "u#" + m.group(1) if m else u


class Story:
    """Renders events, remembering the highest fence committed per coupon,
    so that a write landing after a newer one is pointed out."""

    def __init__(self, seqs=None):
        self.top = {}
        self.seqs = seqs or {}  # claim id -> seq, for the unfenced modes
        self.seq_by = {}  # (coupon, seq) -> who wrote it first

    def render(self, who, ev, f):
        c = coupon_of(f)
        if ev == "tour.mark":
            return "** " + f.get("msg", "")
        if ev == "lock.acquired":
            return "%s acquired coupon:{%s}:lock fence=%s token=%s%s" % (
                who, f.get("resource", c), f.get("fence"), f.get("token", "?"),
                "" if f.get("backend", "redis") == "redis"
                else " (" + f["backend"] + ")")
        if ev == "lock.released":
            return "%s released fence=%s" % (who, f.get("fence"))
        if ev == "claim.ok" and fence_txt(f.get("fence")) == "none" \
                and f.get("claim") in self.seqs:
            # No lock, no fence: what the write read and wrote is the story.
            seq = self.seqs[f["claim"]]
            s = "%s wrote %s's claim: claimed := %d (it read %d)" % (
                who, short_user(f.get("user"), c), seq, seq - 1)
            first = self.seq_by.get((c, seq))
            if first is None:
                self.seq_by[(c, seq)] = who
            else:
                s += (" -- claimed = %d was written before (first by %s): a lost "
                      "update, one coupon too many" % (seq, first))
            return s
        if ev == "claim.ok":
            fence = f.get("fence")
            s = "%s wrote %s's claim %s, fence %s: committed" % (
                who, short_user(f.get("user"), c), f.get("claim"), fence_txt(fence))
            try:
                fv = int(fence)
            except (TypeError, ValueError):
                fv = -1
            top = self.top.get(c)
            if fv >= 0 and top is not None and fv < top:
                s += " -- AFTER fence %d's write: out of order" % top
            if fv >= 0:
                self.top[c] = max(fv, top if top is not None else fv)
            return s
        if ev == "claim.fenced":
            return "%s's write refused: fence %s is not above %s (%s: 409 fenced)" % (
                who, f.get("fence"), f.get("last_fence"), short_user(f.get("user"), c))
        if ev == "claim.lease_lost":
            return ("%s's commit refused by the gate: lease fence=%s no longer "
                    "valid by its own clock, rolled back (%s: 503 lease_lost)" % (
                        who, f.get("fence"), short_user(f.get("user"), c)))
        if ev == "lease.lost":
            return "%s's watchdog: lease fence=%s lost (%s)" % (
                who, f.get("fence"), f.get("reason"))
        if ev == "wd.renew_failed":
            return "%s's watchdog: renewal failed (%s)" % (who, f.get("err"))
        if ev == "fence.recovered":
            return ("%s: fence %s refused while its token still held the lock "
                    "(Redis lost the counter): counter raised to %s, retrying" % (
                        who, f.get("fence"), f.get("counter")))
        if ev in ("claim.unavailable", "claim.lock_error"):
            return "%s: 503 unavailable (%s)" % (who, f.get("err"))
        if ev == "claim.degraded":
            return ("%s: the lock is unavailable (%s): claims go to PostgreSQL's "
                    "conditional UPDATE alone, no lock, no fence" % (who, f.get("err")))
        if ev == "soldout.memo":
            return "%s: sold out; from now on its event loop answers 410 from memory" % who
        if ev == "lock.etcd_fence_offset":
            return "%s raised etcd's fence offset of %s to %s (the coupon's last accepted fence)" % (
                who, f.get("resource"), f.get("offset"))
        rest = " ".join("%s=%s" % kv for kv in f.items()
                        if kv[0] not in ("instance", "request_id"))
        return "%s %s %s" % (who, ev, rest)


# Events kept without a coupon: they belong to the story of the instances
# the demo runs (a watchdog round is for all of its leases).
NO_COUPON_EVENTS = {"tour.mark", "wd.renew_failed", "lock.subscriber_lost",
                    "lock.subscriber_connected", "ready.backend"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--t0", required=True)
    ap.add_argument("--coupons", default=".")
    ap.add_argument("--max", type=int, default=0)
    ap.add_argument("--head", type=int, default=0,
                    help="only the first N lines")
    ap.add_argument("--from", dest="from_", help="only events at or after this time")
    ap.add_argument("--seq", help="file of 'claim_id seq' lines")
    ap.add_argument("--name", action="append", default=[])
    ap.add_argument("--skip", action="append", default=[],
                    help="events to leave out")
    ap.add_argument("logs", nargs="+")
    a = ap.parse_args()
    t0 = parse_ts(a.t0)
    t_from = parse_ts(a.from_) if a.from_ else t0
    names = dict(x.split("=", 1) for x in a.name)
    want = re.compile(r"^(?:%s)$" % a.coupons)
    skip = set(a.skip)
    ev_rows = []
    for i, path in enumerate(a.logs):
        try:
            fh = open(path, errors="replace")
        except OSError:
            continue
        with fh:
            for n, line in enumerate(fh):
                m = LINE.match(line.rstrip("\n"))
                if not m:
                    continue
                ts = parse_ts(m.group(1))
                if ts < t_from - 0.0005:
                    continue
                f = fields(m.group(3))
                ev = f.pop("event", "?")
                if ev in skip:
                    continue
                if ev == "ready.backend" and f.get("up") == "1":
                    continue  # the probe's good news: start-up noise
                c = coupon_of(f)
                if c is None:
                    if ev not in NO_COUPON_EVENTS:
                        continue
                elif not want.match(c):
                    continue
                ev_rows.append((ts, i, n, f.get("instance", "?"), ev, f))
    ev_rows.sort(key=lambda r: (r[0], r[1], r[2]))
    seqs = {}
    if a.seq:
        with open(a.seq) as fh:
            for ln in fh:
                p = ln.split()
                if len(p) == 2:
                    seqs[p[0]] = int(p[1])
    story = Story(seqs)
    out = []
    for ts, _, _, inst, ev, f in ev_rows:
        who = names.get(inst, inst.rsplit("-", 1)[-1])
        fence = f.get("fence")
        if ev == "claim.ok" and fence_txt(fence) != "none" and out \
                and out[-1][3] == (who, fence):
            # The claims of one batch: one lease, one fence, one transaction.
            out[-1][4] += 1
            out[-1][1] = "%s wrote %d claims in one transaction, fence %s: committed" % (
                who, out[-1][4], fence)
            continue
        text = story.render(who, ev, f)
        if out and out[-1][1] == text:
            out[-1][2] += 1
            continue
        key = (who, fence) if ev == "claim.ok" else None
        out.append(["t=%.3f" % (ts - t0), text, 1, key, 1])
    lines = ["%s %s%s" % (r[0], r[1], "" if r[2] == 1 else "  (x%d)" % r[2])
             for r in out]
    if a.head:
        lines = lines[:a.head]
    if a.max and len(lines) > a.max:
        head = a.max * 2 // 3
        tail = a.max - head
        cut = len(lines) - head - tail
        lines = lines[:head] + ["   ... %d more events ..." % cut] + lines[-tail:]
    for ln in lines:
        print("  " + ln)
    if not lines:
        print("  (no events)")


if __name__ == "__main__":
    sys.exit(main())
