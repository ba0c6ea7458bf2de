#!/usr/bin/env python3
"""check_openapi.py: service/openapi.yaml against the service and its tests.

    check_openapi.py ROOT [--records DIR] [--witnesses SUITE]

Checks, each failure printed as a FAIL line:

  document   OpenAPI 3.0 structure: every operation has responses, every
             $ref resolves, every error response lists its codes
             (x-error-codes) and every success names its test (x-tested-by)
  routes     the routes api.c serves (its table of exact paths, the
             /coupons/{id} prefix and its /claims/{user} sub-route), with
             their methods, are the document's paths, no more, no fewer
  codes      every (status, error code) the service source can answer
             (api__error, api__unavailable, the JSON it writes itself, the
             request parser's codes, which are 400s) is documented on some
             route, and every documented code is one the source has
  balancer   the JSON errors deploy/nginx/proxy.conf answers are the
             document's x-load-balancer-errors
  witnesses  each documented answer names a test that exists (TT_TEST or
             a t_* function of the stack suite) and whose file mentions
             the code, or says "untested: why"
  records    with --records DIR (what the harness wrote with
             COUPONSVC_API_RECORD=DIR: one file per test, a line per
             answer): every answer a test saw is documented, and every
             witness that ran produced the answer it is named for

--witnesses SUITE prints the witnesses that live in SUITE ("integration":
the objects of ITEST_OBJS in tests/tests.mk), one per line, and exits.
"""
import glob
import os
import re
import sys

import yaml

failed = 0


def fail(msg):
    global failed
    failed += 1
    print("   FAIL " + msg)


def load(root):
    return yaml.safe_load(open(os.path.join(root, "service/openapi.yaml")))


def resolve(doc, ref):
    node = doc
    for part in ref.lstrip("#/").split("/"):
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def walk_refs(doc, node, where):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                if resolve(doc, v) is None:
                    fail("%s: $ref %s does not resolve" % (where, v))
            else:
                walk_refs(doc, v, where)
    elif isinstance(node, list):
        for v in node:
            walk_refs(doc, v, where)


def documented(doc):
    """[(path, method, status, code or None, witness)] of the document."""
    out = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "delete", "patch", "head"):
                continue
            for status, resp in op.get("responses", {}).items():
                st = int(status)
                if st >= 400:
                    for code, witness in (resp.get("x-error-codes") or {}).items():
                        out.append((path, method.upper(), st, code, witness))
                else:
                    out.append((path, method.upper(), st, None, resp.get("x-tested-by")))
    return out


def check_document(doc):
    if not str(doc.get("openapi", "")).startswith("3.0."):
        fail("openapi: want 3.0.x, have %r" % doc.get("openapi"))
    for key in ("info", "paths"):
        if key not in doc:
            fail("no %s" % key)
    walk_refs(doc, doc, "document")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = "%s %s" % (method.upper(), path)
            resps = op.get("responses") or {}
            if not resps:
                fail("%s: no responses" % where)
            for p in re.findall(r"\{(\w+)\}", path):
                names = [x.get("name") for x in op.get("parameters", [])
                         if "$ref" not in x] + [
                    resolve(doc, x["$ref"]).get("name") for x in op.get("parameters", [])
                    if "$ref" in x]
                if p not in names:
                    fail("%s: path parameter {%s} not declared" % (where, p))
            for status, resp in resps.items():
                if not re.fullmatch(r"[1-5][0-9][0-9]", str(status)):
                    fail("%s: status %r" % (where, status))
                    continue
                if "description" not in resp:
                    fail("%s %s: no description" % (where, status))
                if int(status) >= 400 and not resp.get("x-error-codes"):
                    fail("%s %s: no x-error-codes" % (where, status))
                if int(status) < 400 and not resp.get("x-tested-by"):
                    fail("%s %s: no x-tested-by" % (where, status))


def source_routes(root):
    """{path: method} api.c serves."""
    api = open(os.path.join(root, "service/api.c")).read()
    exact = dict(re.findall(r'\{"(/[a-z]+)",\s*(API__\w+)\}', api))
    m = re.search(r"resp->allow\s*=\s*\(([^?]*)\)\s*\?\s*\"POST\"", api)
    post_routes = set(re.findall(r"route == (API__\w+)", m.group(1))) if m else set()
    routes = {p: ("POST" if r in post_routes else "GET") for p, r in exact.items()}
    if 'strncmp(path, "/coupons/", 9)' in api:
        routes["/coupons/{id}"] = "GET"
        if 'strstr(arg, "/claims/")' in api:
            routes["/coupons/{id}/claims/{user}"] = "GET"
    return routes


def check_routes(doc, root):
    want = source_routes(root)
    have = {}
    for path, item in doc["paths"].items():
        for method in item:
            have[path] = method.upper()
    for p, m in sorted(want.items()):
        if p not in have:
            fail("route %s %s (service/api.c) is not documented" % (m, p))
        elif have[p] != m:
            fail("route %s: documented as %s, api.c serves %s" % (p, have[p], m))
    for p in sorted(set(have) - set(want)):
        fail("documented route %s is not served by service/api.c" % p)
    return want


def source_codes(root):
    """{(status or None, code)} the service source can answer."""
    codes = set()
    for f in glob.glob(os.path.join(root, "service/*.c")):
        # Comments may quote other protocols' error bodies (etcd's
        # {"error","message","code"}): only code counts.
        s = re.sub(r"/\*.*?\*/", "", open(f).read(), flags=re.S)
        for st, code in re.findall(r'api__error\(\s*resp,\s*(\d{3}),\s*"(\w+)"', s):
            codes.add((int(st), code))
        for code in re.findall(r'api__unavailable\(\s*resp,\s*"(\w+)"', s):
            codes.add((503, code))
        for code in re.findall(r'"error",\s*"(\w+)"', s):
            codes.add((None, code))
        # api.c's table of claim outcomes: [CLAIM_X] = {status, "code"}.
        for st, code in re.findall(r'\[CLAIM_\w+\]\s*=\s*\{(\d{3}),\s*"(\w+)"\}', s):
            codes.add((int(st), code))
        for code in re.findall(r'\\"error\\":\s*\\"(\w+)\\"', s):
            codes.add((None, code))
        if f.endswith("/req.c"):
            # The parser's codes become 400s (api__error(resp, 400, err.code..)).
            for code in re.findall(r'req__fail\(\s*err,\s*"(\w+)"', s):
                codes.add((400, code))
            for code in re.findall(r'->code\s*=\s*"(\w+)"', s):
                codes.add((400, code))
    return codes


def check_codes(doc, root, items):
    src = source_codes(root)
    doc_pairs = {(st, c) for _, _, st, c, _ in items if c is not None}
    doc_codes = {c for _, c in doc_pairs}
    for st, code in sorted(src, key=lambda x: (x[0] or 0, x[1])):
        if st is None and code not in doc_codes:
            fail("the service can answer error %r; the document never mentions it" % code)
        elif st is not None and (st, code) not in doc_pairs:
            fail("the service can answer %d %r; the document has no such answer" % (st, code))
    src_codes = {c for _, c in src}
    for st, code in sorted(doc_pairs):
        if code not in src_codes:
            fail("documented %d %r: no such code in service/*.c" % (st, code))
        elif (st, code) not in src and (None, code) not in src:
            fail("documented %d %r: the source answers %r with %s" % (
                st, code, code, sorted(s for s, c in src if c == code)))
    return src


def check_balancer(doc, root):
    conf = open(os.path.join(root, "deploy/nginx/proxy.conf")).read()
    lb = {(int(st), code) for st, code in re.findall(
        r"return (\d{3}) '\{\"error\":\"(\w+)\"", conf)}
    # The /metrics page is the balancer's own 404 too.
    documented_lb = {(int(st), v["error"]) for st, v in
                     doc["info"].get("x-load-balancer-errors", {}).items()}
    for st, code in sorted(lb - documented_lb):
        fail("deploy/nginx/proxy.conf answers %d %r; not in x-load-balancer-errors" % (st, code))
    for st, code in sorted(documented_lb - lb):
        fail("x-load-balancer-errors has %d %r; deploy/nginx/proxy.conf does not answer it" % (st, code))
    return documented_lb, {(int(st)): v.get("tested-by") for st, v in
                           doc["info"].get("x-load-balancer-errors", {}).items()}


def test_files(root):
    """{test name: file text} for TT_TEST tests and the stack suite's t_*."""
    tests = {}
    for f in glob.glob(os.path.join(root, "tests/**/*.c"), recursive=True):
        s = open(f).read()
        for name in re.findall(r"TT_TEST\((\w+),", s):
            tests[name] = (f, s)
    for f in glob.glob(os.path.join(root, "tests/**/*.sh"), recursive=True):
        s = open(f).read()
        for name in re.findall(r"^(t_\w+)\(\)", s, re.M):
            tests[name] = (f, s)
    return tests


def check_witnesses(items, lb_witness, lb_pairs, tests):
    untested = []
    for path, method, st, code, w in items:
        what = "%s %s %d%s" % (method, path, st, " " + code if code else "")
        if not isinstance(w, str) or not w:
            fail("%s: no witness" % what)
        elif w.startswith("untested:"):
            untested.append("%s (%s)" % (what, w[9:].strip()))
        elif w not in tests:
            fail("%s: witness %s is not a test" % (what, w))
        elif code is not None and not re.search(r'\\?"%s\\?"|error.{1,4}%s' % (code, code), tests[w][1]):
            fail("%s: %s (%s) never mentions %r" % (what, w, tests[w][0], code))
    for st, w in sorted(lb_witness.items()):
        code = dict(lb_pairs)[st] if st in dict(lb_pairs) else None
        if not w:
            fail("balancer %d: no witness" % st)
        elif w.startswith("untested:"):
            untested.append("balancer %d %s (%s)" % (st, code, w[9:].strip()))
        elif w not in tests:
            fail("balancer %d: witness %s is not a test" % (st, w))
    return untested


def template(path, routes):
    if path in routes:
        return path
    m = re.fullmatch(r"/coupons/[^/]*/claims/.*", path)
    if m:
        return "/coupons/{id}/claims/{user}"
    if path.startswith("/coupons/"):
        return "/coupons/{id}"
    return None


def check_records(items, lb_items, routes, lb_pairs, records):
    seen = {}  # test -> set of (route, method, status, code)
    for f in glob.glob(os.path.join(records, "*.api")):
        name = os.path.basename(f)[:-4]
        s = seen.setdefault(name, set())
        for line in open(f):
            parts = line.split()
            if len(parts) != 4:
                continue
            method, path, st, code = parts[0], parts[1], int(parts[2]), parts[3]
            if path == "/lb-healthz":
                continue  # the balancer's own liveness page
            route = template(path, routes)
            method = "GET" if method == "HEAD" else method
            if st == 405 and route is not None:
                method = routes[route]  # documented on the route's method
            s.add((route, method, st, None if code == "-" else code))
    doc_set = {(p, m, st, c) for p, m, st, c, _ in items}
    lb = set(lb_pairs)
    answers = 0
    for name, s in sorted(seen.items()):
        for route, method, st, code in sorted(s, key=str):
            answers += 1
            if (route, method, st, code) in doc_set:
                continue
            if (st, code) in lb:
                continue  # the balancer's, on any route
            if route is None and st == 404 and code == "not_found":
                continue  # a path with no route
            fail("%s saw %s %s %d %s, which the document does not have" % (
                name, method, route, st, code))
    for st, code, w in lb_items:
        if isinstance(w, str) and w in seen and not any(
                x[2] == st and x[3] == code for x in seen[w]):
            fail("%s ran but never got the balancer's %d %s" % (w, st, code))
    for path, method, st, code, w in items:
        if isinstance(w, str) and w in seen:
            if (path, method, st, code) not in seen[w]:
                fail("%s ran but never got %s %s %d%s" % (
                    w, method, path, st, " " + code if code else ""))
    return seen, answers


def lb_items(doc):
    """[(status, code, witness)] of x-load-balancer-errors."""
    return [(int(st), v["error"], v.get("tested-by")) for st, v in
            doc["info"].get("x-load-balancer-errors", {}).items()]


def witnesses_in_suite(root, suite, items, tests):
    mk = open(os.path.join(root, "tests/tests.mk")).read()
    m = re.search(r"ITEST_OBJS := (.*?)\n\n", mk, re.S)
    files = {os.path.join(root, "tests", o[:-2] + ".c")
             for o in re.findall(r"itest/\w+\.o", m.group(1))}
    ws = [w for _, _, _, _, w in items] + [w for _, _, w in lb_items(load(root))]
    names = {w for w in ws if isinstance(w, str) and w in tests and tests[w][0] in files}
    return sorted(names)


def main(argv):
    root = argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "."
    args = argv[2:] if root != "." or (len(argv) > 1 and argv[1] == ".") else argv[1:]
    doc = load(root)
    items = documented(doc)
    tests = test_files(root)
    if "--witnesses" in args:
        for n in witnesses_in_suite(root, args[args.index("--witnesses") + 1], items, tests):
            print(n)
        return 0
    check_document(doc)
    routes = check_routes(doc, root)
    src = check_codes(doc, root, items)
    lb_pairs, lb_witness = check_balancer(doc, root)
    untested = check_witnesses(items, lb_witness, lb_pairs, tests)
    summary = "%d documented answers on %d routes, %d codes in the source, %d balancer errors" % (
        len(items), len(doc["paths"]), len({c for _, c in src}), len(lb_pairs))
    if "--records" in args:
        seen, answers = check_records(items, lb_items(doc), routes, lb_pairs,
                                      args[args.index("--records") + 1])
        summary += "; %d distinct answers recorded by %d tests" % (answers, len(seen))
    for u in untested:
        print("   untested " + u)
    print("check_openapi: %s; %d failed" % (summary, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
