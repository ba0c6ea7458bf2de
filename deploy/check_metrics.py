#!/usr/bin/env python3
"""check_metrics.py: every metric the alert rules and the dashboards name
exists in a replica's /metrics, with the label values they select.

    check_metrics.py METRICS_TEXT RULES.yml... DASHBOARD.json...

METRICS_TEXT is a scrape of a running couponsvc (check-deploy.sh starts one
with no reachable backend: every family is rendered all the same, counters
at 0). A rule or panel that names a metric the service does not export, or
selects a label value it never has ({result="failed"}), would show nothing,
or never fire, without any error from Prometheus or Grafana.
"""
import json
import re
import sys

import yaml

# Labels Prometheus adds to every series of a target, not the service.
TARGET_LABELS = {"instance", "job", "pod", "le"}
NAME = re.compile(r"\b((?:couponsvc_[a-z0-9_]+)|up)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def scrape(path):
    """{metric name: [ {label: value} ... ]} from the text format."""
    series = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        if not m:
            continue
        labels = dict((k, v) for k, _, v in MATCHER.findall(m.group(2) or ""))
        series.setdefault(m.group(1), []).append(labels)
    return series


def exprs_of_rules(path):
    doc = yaml.safe_load(open(path))
    for g in doc.get("groups", []):
        for r in g.get("rules", []):
            yield "%s: %s" % (path, r.get("alert") or r.get("record")), r["expr"]


def exprs_of_dashboard(path):
    doc = json.load(open(path))

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    yield "%s: panel %r" % (path, p.get("title")), t["expr"]
            yield from walk(p.get("panels", []))

    yield from walk(doc.get("panels", []))
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and isinstance(q, str):
            yield "%s: variable %s" % (path, v.get("name")), q


def main(argv):
    if len(argv) < 3:
        print(__doc__)
        return 2
    series = scrape(argv[1])
    series["up"] = [{}]  # Prometheus's own, per target
    failed = checked = 0
    names_used = set()
    for path in argv[2:]:
        gen = exprs_of_dashboard(path) if path.endswith(".json") else exprs_of_rules(path)
        for where, expr in gen:
            for name, sel in NAME.findall(expr):
                names_used.add(name)
                checked += 1
                if name not in series:
                    print("   FAIL %s names %s, which /metrics does not have" % (where, name))
                    failed += 1
                    continue
                for k, op, v in MATCHER.findall(sel):
                    if op != "=" or k in TARGET_LABELS or name == "up":
                        continue
                    if not any(s.get(k) == v for s in series[name]):
                        have = sorted({s.get(k, "") for s in series[name]})
                        print('   FAIL %s selects %s{%s="%s"}; /metrics has %s=%s'
                              % (where, name, k, v, k, have))
                        failed += 1
    print("check_metrics: %d metric references (%d metrics) checked against /metrics, "
          "%d failed" % (checked, len(names_used), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
