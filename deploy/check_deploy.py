#!/usr/bin/env python3
"""check_deploy.py: structural checks of the deployment files.

Run by deploy/check-deploy.sh (make check-deploy). YAML syntax is checked by
parsing every file; then the properties the rest of the project relies on
are asserted: the compose services and their ordering, the Kubernetes
objects and their probes, the Dockerfile's stages. A failed check prints
what was expected and what was found.

    check_deploy.py ROOT [RENDERED_K8S_YAML]

RENDERED_K8S_YAML is the output of `kubectl kustomize deploy/k8s` when
kubectl was available; without it the files listed in kustomization.yaml
are read directly.
"""

import os
import re
import sys

try:
    import yaml
except ImportError:
    sys.stderr.write("check_deploy: the python3 yaml module is missing: "
                     "apt-get install python3-yaml\n")
    sys.exit(2)

failures = []
passes = 0


def check(cond, what, found=None):
    """Record one assertion; print both sides when it fails."""
    global passes
    if cond:
        passes += 1
    else:
        msg = what if found is None else "%s (found: %r)" % (what, found)
        failures.append(msg)
        print("  FAIL " + msg)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def get(d, *keys):
    for k in keys:
        if isinstance(d, dict):
            d = d.get(k)
        elif isinstance(d, list) and isinstance(k, int) and k < len(d):
            d = d[k]
        else:
            return None
    return d


# ------------------------------------------------------------- compose ----

def check_compose(root):
    print("compose: docker-compose.yml")
    docs = load_all(os.path.join(root, "docker-compose.yml"))
    check(len(docs) == 1, "docker-compose.yml is one YAML document", len(docs))
    svc = get(docs[0], "services") or {}
    for name in ("postgres", "redis", "migrate", "couponsvc", "lb", "loadgen"):
        check(name in svc, "service %s exists" % name)
    if not all(n in svc for n in ("postgres", "redis", "migrate", "couponsvc", "lb", "loadgen")):
        return

    check(str(get(svc, "postgres", "image")).startswith("postgres:15"),
          "postgres uses postgres:15", get(svc, "postgres", "image"))
    check(get(svc, "postgres", "healthcheck", "test") is not None, "postgres has a healthcheck")
    check(str(get(svc, "redis", "image")).startswith("redis:7"),
          "redis uses redis:7", get(svc, "redis", "image"))
    rcmd = " ".join(get(svc, "redis", "command") or [])
    check("--maxmemory-policy noeviction" in rcmd, "redis runs with noeviction", rcmd)
    check("--appendonly yes" in rcmd, "redis persists with appendonly yes", rcmd)
    check(get(svc, "redis", "healthcheck", "test") is not None, "redis has a healthcheck")

    check(get(svc, "migrate", "command") == ["migrate"], "migrate runs `couponsvc migrate`",
          get(svc, "migrate", "command"))
    check(get(svc, "migrate", "depends_on", "postgres", "condition") == "service_healthy",
          "migrate waits for postgres healthy")

    app = svc["couponsvc"]
    check(get(app, "deploy", "replicas") == 3, "couponsvc has deploy.replicas 3",
          get(app, "deploy", "replicas"))
    check("ports" not in app, "couponsvc publishes no host port", app.get("ports"))
    check(get(app, "depends_on", "migrate", "condition") == "service_completed_successfully",
          "couponsvc waits for migrate to complete")
    check(get(app, "depends_on", "redis", "condition") == "service_healthy",
          "couponsvc waits for redis healthy")
    check("/readyz" in " ".join(get(app, "healthcheck", "test") or []),
          "couponsvc healthcheck probes /readyz", get(app, "healthcheck", "test"))
    env = get(app, "environment") or {}
    for k in ("COUPON_HTTP_ADDR", "COUPON_PG_DSN", "COUPON_REDIS_ADDRS",
              "COUPON_ADMIN_TOKEN", "COUPON_CLAIM_MODE", "COUPON_LOCK_TTL_MS"):
        check(k in env, "couponsvc environment sets %s" % k)
    check(str(env.get("COUPON_HTTP_ADDR", "")).startswith("0.0.0.0:"),
          "couponsvc listens on all interfaces in its container", env.get("COUPON_HTTP_ADDR"))
    check("container_name" not in app, "couponsvc has no container_name (it has replicas)")

    lb = svc["lb"]
    check(str(lb.get("image", "")).startswith("nginx"), "lb is nginx", lb.get("image"))
    check("${COUPONSVC_LB_PUBLISH:-8080}:8080" in [str(p) for p in lb.get("ports", [])],
          "lb publishes ${COUPONSVC_LB_PUBLISH:-8080}:8080 (8080:8080 by default)", lb.get("ports"))
    check(any("deploy/nginx" in str(v) for v in lb.get("volumes", [])),
          "lb mounts its config from deploy/nginx", lb.get("volumes"))
    check(get(svc, "loadgen", "profiles") == ["loadtest"], "loadgen only in profile loadtest",
          get(svc, "loadgen", "profiles"))

    # Secrets: no value in the file, compose refuses to start without them,
    # and the example env file names every one.
    text = open(os.path.join(root, "docker-compose.yml")).read()
    required = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    for var in ("POSTGRES_PASSWORD", "COUPON_REDIS_PASSWORD", "REDIS_ADMIN_PASSWORD",
                "COUPON_ADMIN_TOKEN"):
        check(var in required, "compose requires %s (${%s:?...})" % (var, var), sorted(required))
    defaulted = re.findall(r"\$\{([A-Z_]*(?:PASSWORD|TOKEN|SECRET)[A-Z_]*):?-", text)
    check(not defaulted, "no secret has a default in compose", defaulted)
    example = open(os.path.join(root, "deploy/compose.env.example")).read()
    listed = set(re.findall(r"^([A-Z_]+)=\s*$", example, re.M))
    check(required <= listed, "deploy/compose.env.example lists every required variable, empty",
          sorted(required - listed))
    check(env.get("COUPON_REDIS_USERNAME") == "couponsvc" and "COUPON_REDIS_PASSWORD" in env,
          "couponsvc logs in to Redis as its ACL user")
    pg_env = get(svc, "postgres", "environment") or {}
    check(pg_env.get("POSTGRES_HOST_AUTH_METHOD") == "scram-sha-256",
          "postgres accepts only scram-sha-256 over the network",
          pg_env.get("POSTGRES_HOST_AUTH_METHOD"))
    check("requirepass" in rcmd and "couponsvc.acl" in rcmd,
          "redis runs with a password and the shipped ACL user", rcmd)
    check("REDIS_ADMIN_PASSWORD" in " ".join(get(svc, "redis", "healthcheck", "test") or []),
          "redis health check authenticates")

    # The balancer: JSON errors for what nginx makes itself, no /metrics, no
    # internal address in a header.
    proxy = open(os.path.join(root, "deploy/nginx/proxy.conf")).read()
    live = "\n".join(l for l in proxy.splitlines() if not l.lstrip().startswith("#"))
    for code in ("400", "408", "413", "414", "494", "500", "501", "502", "503", "504"):
        check(re.search(r"^error_page %s " % code, live, re.M) is not None,
              "proxy.conf has an error page for %s" % code)
    check(live.count("default_type application/json") >= 10, "the error pages are JSON")
    check(re.search(r"location = /metrics\s*\{[^}]*return 404", live) is not None,
          "the balancer answers 404 for /metrics")
    check("$upstream_addr" not in live.replace("up=$upstream_addr", ""),
          "no header carries $upstream_addr")
    # The PostgreSQL connection budget at the 5 replicas the file's head
    # shows: 5 x (COUPON_THREADS + 1) + migrate + 3 reserved for superusers.
    pcmd = " ".join(str(x) for x in (get(svc, "postgres", "command") or []))
    mc = re.search(r"max_connections=(?:\$\{[A-Z_]+:-)?(\d+)", pcmd)
    tdef = re.search(r"COUPON_THREADS:-(\d+)", str(env.get("COUPON_THREADS")))
    need = 5 * (int(tdef.group(1)) + 1) + 1 + 3 if tdef else None
    check(mc is not None and need is not None and int(mc.group(1)) >= need,
          "postgres max_connections >= 5 replicas x (COUPON_THREADS + 1) + migrate + 3 reserved (%s)"
          % need, mc and mc.group(1))
    build = get(app, "build", "dockerfile")
    check(build == "deploy/Dockerfile", "images build from deploy/Dockerfile", build)

    # The LB finds the replicas with the engine's DNS server, whichever it
    # is: the resolver comes from the container's /etc/resolv.conf at start
    # (Docker's 127.0.0.11 and podman's gateway alike), never a fixed one,
    # and no `server ... resolve` (nginx >= 1.27.3 only; Debian 12 has 1.22).
    conf = open(os.path.join(root, "deploy/nginx/compose.conf")).read()
    clive = "\n".join(l for l in conf.splitlines() if not l.lstrip().startswith("#"))
    check(re.search(r"^\s*resolver\s+\d", clive, re.M) is None,
          "compose nginx names no fixed resolver address (it is taken from /etc/resolv.conf)")
    check("include /tmp/couponsvc-lb/resolver.conf;" in clive,
          "compose nginx includes the resolver written at container start")
    lbcmd = "\n".join(str(x) for x in (lb.get("command") or []))
    check("/etc/resolv.conf" in lbcmd and "/tmp/couponsvc-lb/resolver.conf" in lbcmd,
          "the lb command writes the resolver from /etc/resolv.conf", lbcmd[:80])
    check(re.search(r"\bresolve\b", re.sub(r"resolver\S*", "", clive)) is None,
          "compose nginx has no `server ... resolve` (nginx >= 1.27.3 only)")
    check(re.search(r"default\s+couponsvc:8081;", clive) is not None,
          "compose nginx sends to the couponsvc service by name ($couponsvc_upstream)")
    check(re.search(r"^\s*proxy_pass\s+http://\$couponsvc_upstream;", live, re.M) is not None,
          "proxy.conf proxies to $couponsvc_upstream")
    for name in ("nofile", "nproc"):
        for s in ("couponsvc", "lb"):
            v = str(get(svc, s, "ulimits", name))
            check(v.startswith("${COUPONSVC_%s:-" % name.upper()),
                  "%s's ulimit %s is a setting (COUPONSVC_%s)" % (s, name, name.upper()), v)
    check(os.path.isfile(os.path.join(root, ".dockerignore")) and
          not os.path.exists(os.path.join(root, "deploy/Dockerfile.dockerignore")),
          "one .dockerignore, at the root of the context (docker-compose 1.29 and podman read only that one)")
    if os.path.isfile(os.path.join(root, ".dockerignore")):
        ign = [l.strip() for l in open(os.path.join(root, ".dockerignore"))
               if l.strip() and not l.lstrip().startswith("#")]
        for p in (".git", "build", ".env"):
            check(p in ign, ".dockerignore keeps %s out of the image" % p, ign)


# ---------------------------------------------------------- kubernetes ----

def k8s_docs(root, rendered):
    if rendered:
        return load_all(rendered)
    kdir = os.path.join(root, "deploy/k8s")
    kust = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(kdir, res)
        check(os.path.isfile(path), "kustomization resource %s exists" % res)
        if os.path.isfile(path):
            docs.extend(load_all(path))
    return docs


def check_k8s(root, rendered):
    print("kubernetes: deploy/k8s (%s)" % ("rendered by kubectl kustomize" if rendered
                                           else "files of kustomization.yaml"))
    kdir = os.path.join(root, "deploy/k8s")
    for f in sorted(os.listdir(kdir)):
        if f.endswith((".yaml", ".yml")):
            load_all(os.path.join(kdir, f))  # syntax: raises on error
    docs = k8s_docs(root, rendered)
    by_kind = {}
    for d in docs:
        check(isinstance(d, dict) and "apiVersion" in d and "kind" in d
              and get(d, "metadata", "name"), "every object has apiVersion, kind, name", d)
        by_kind.setdefault(d.get("kind"), []).append(d)
    for kind in ("Deployment", "Service", "ConfigMap", "Secret", "Job", "PodDisruptionBudget"):
        check(kind in by_kind, "a %s is defined" % kind, sorted(by_kind))
    if "Deployment" not in by_kind:
        return

    dep = by_kind["Deployment"][0]
    spec = dep["spec"]
    pod = get(spec, "template", "spec")
    c = get(pod, "containers", 0)
    check(spec.get("replicas") == 3, "Deployment has 3 replicas", spec.get("replicas"))
    sel = get(spec, "selector", "matchLabels") or {}
    labels = get(spec, "template", "metadata", "labels") or {}
    check(all(labels.get(k) == v for k, v in sel.items()),
          "Deployment selector matches its pod labels", (sel, labels))
    check(get(c, "readinessProbe", "httpGet", "path") == "/readyz", "readinessProbe is /readyz")
    check(get(c, "livenessProbe", "httpGet", "path") == "/healthz", "livenessProbe is /healthz")
    # Probes, as the readiness policy (README: Readiness) wants them:
    # readiness on /readyz, liveness on /healthz only (a backend outage must
    # never restart pods), a startup probe so that a slow first backend
    # check is not mistaken for a dead process.
    check(get(c, "startupProbe", "httpGet", "path") == "/healthz", "startupProbe is /healthz",
          get(c, "startupProbe"))
    check(get(c, "livenessProbe", "httpGet", "path") != "/readyz",
          "liveness never probes /readyz (an outage would restart every pod)")
    rp = get(c, "readinessProbe") or {}
    check(isinstance(rp.get("timeoutSeconds"), int) and isinstance(rp.get("periodSeconds"), int)
          and rp["timeoutSeconds"] < rp["periodSeconds"], "readiness timeout below its period", rp)

    # Shutdown: preStop sleeps while endpoints update, then SIGTERM drains for
    # up to COUPON_SHUTDOWN_GRACE_MS; the grace period must cover both.
    cmd = get(c, "lifecycle", "preStop", "exec", "command") or []
    sleep_s = None
    if len(cmd) == 2 and cmd[0] == "sleep" and str(cmd[1]).isdigit():
        sleep_s = int(cmd[1])
    elif get(c, "lifecycle", "preStop", "sleep", "seconds") is not None:
        sleep_s = int(get(c, "lifecycle", "preStop", "sleep", "seconds"))
    check(sleep_s is not None and sleep_s >= 5,
          "preStop sleeps (>= 5 s) so that endpoints update before SIGTERM", cmd)
    cm0 = (by_kind.get("ConfigMap", [{}])[0].get("data") or {})
    drain_s = int(cm0.get("COUPON_SHUTDOWN_GRACE_MS", "10000")) / 1000.0
    grace = pod.get("terminationGracePeriodSeconds")
    check(isinstance(grace, int) and sleep_s is not None and grace >= sleep_s + drain_s + 5,
          "terminationGracePeriodSeconds >= preStop sleep + COUPON_SHUTDOWN_GRACE_MS + 5 s",
          (grace, sleep_s, drain_s))
    check(get(c, "resources", "requests") and get(c, "resources", "limits"),
          "container has resource requests and limits")
    # Requests measured by the soak test: the figures are in the comment
    # above them, and the memory request must cover the peak RSS measured.
    dep_text = open(os.path.join(root, "deploy/k8s/deployment.yaml")).read()
    m = re.search(r"peak RSS ([0-9.]+) MiB", dep_text)
    mem = str(get(c, "resources", "requests", "memory") or "")
    check(m is not None and mem.endswith("Mi") and int(mem[:-2]) >= float(m.group(1)),
          "memory request covers the soak's peak RSS (\"peak RSS N MiB\" in deployment.yaml)",
          (m and m.group(1), mem))

    # The PostgreSQL connection budget: (replicas + maxSurge) pods x
    # (COUPON_THREADS + 1 readiness connection) + 1 for the migrate Job.
    threads = int(cm0.get("COUPON_THREADS", "16"))
    surge = get(spec, "strategy", "rollingUpdate", "maxSurge")
    surge = surge if isinstance(surge, int) else 1
    budget = (int(spec.get("replicas") or 0) + surge) * (threads + 1) + 1
    ann = get(dep, "metadata", "annotations", "couponsvc/postgres-connections")
    check(str(ann) == str(budget),
          "couponsvc/postgres-connections is (replicas + maxSurge) x (COUPON_THREADS + 1) + 1 = %d"
          % budget, ann)
    # Every secret the pods read is required (no optional: a pod without
    # it must not start).
    for e in get(c, "env") or []:
        ref = get(e, "valueFrom", "secretKeyRef")
        if ref:
            check(not ref.get("optional"), "secret %s is not optional" % e.get("name"))
    check(get(pod, "securityContext", "runAsNonRoot") is True, "pod runs as non-root")
    check(get(c, "securityContext", "allowPrivilegeEscalation") is False,
          "container forbids privilege escalation")
    check(get(c, "securityContext", "readOnlyRootFilesystem") is True,
          "container has a read-only root file system")
    check(get(c, "ports", 0, "containerPort") == 8081, "container port is 8081")

    for svc in by_kind.get("Service", []):
        ssel = get(svc, "spec", "selector") or {}
        check(ssel and all(labels.get(k) == v for k, v in ssel.items()),
              "Service %s selects the Deployment's pods" % svc["metadata"]["name"], ssel)
    for pdb in by_kind.get("PodDisruptionBudget", []):
        psel = get(pdb, "spec", "selector", "matchLabels") or {}
        check(psel and all(labels.get(k) == v for k, v in psel.items()),
              "PodDisruptionBudget selects the Deployment's pods", psel)
        mu = get(pdb, "spec", "maxUnavailable")
        check(mu is not None and mu != 0 and mu != "0%",
              "PDB allows a bounded disruption (maxUnavailable, not 0)", mu)
        check(isinstance(mu, int) and mu < int(spec.get("replicas") or 0),
              "PDB keeps at least one replica serving (maxUnavailable < replicas)", mu)

    cm = by_kind.get("ConfigMap", [{}])[0].get("data", {})
    check(all(k.startswith("COUPON_") for k in cm), "ConfigMap holds COUPON_* settings", sorted(cm))
    sec = by_kind.get("Secret", [{}])[0]
    sdata = sec.get("stringData") or sec.get("data") or {}
    check("COUPON_ADMIN_TOKEN" in sdata and "COUPON_PG_DSN" in sdata,
          "Secret holds COUPON_ADMIN_TOKEN and COUPON_PG_DSN", sorted(sdata))
    check("COUPON_REDIS_PASSWORD" in sdata, "Secret holds COUPON_REDIS_PASSWORD", sorted(sdata))
    check(all(v in ("", None) for v in sdata.values()),
          "Secret values are empty (no usable default)", sdata)
    check(cm.get("COUPON_REDIS_USERNAME") == "couponsvc", "ConfigMap names the Redis ACL user",
          cm.get("COUPON_REDIS_USERNAME"))
    env_names = {e.get("name") for e in (get(c, "env") or [])}
    check("COUPON_REDIS_PASSWORD" in env_names, "Deployment passes COUPON_REDIS_PASSWORD",
          sorted(env_names))
    job = by_kind.get("Job", [{}])[0]
    check(get(job, "spec", "template", "spec", "containers", 0, "args") == ["migrate"],
          "Job runs couponsvc migrate")
    if rendered:
        images = {get(d, "spec", "template", "spec", "containers", 0, "image")
                  for d in docs if d.get("kind") in ("Deployment", "Job")}
        check(len(images) == 1, "Deployment and Job use one image", images)


# ---------------------------------------------------------- Dockerfile ----

def check_dockerfile(root):
    print("Dockerfile: deploy/Dockerfile")
    text = open(os.path.join(root, "deploy/Dockerfile")).read()
    lines = [l for l in text.replace("\\\n", " ").splitlines()
             if l.strip() and not l.lstrip().startswith("#")]
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    check(len(froms) >= 2 and all(f.startswith("debian:12") for f in froms),
          "multi-stage build on debian:12", froms)
    final = text[text.rfind("\nFROM "):]
    check(re.search(r"make\b.*build/couponsvc.*build/loadgen", text) is not None,
          "builder runs make build/couponsvc build/loadgen")
    for pkg in ("libmicrohttpd12", "libhiredis0.14", "libjansson4", "libpq5", "libcurl4",
                "ca-certificates"):
        check(pkg in final, "runtime installs %s" % pkg)
    check("-dev" not in final, "runtime installs no -dev package")
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    check(user and not user[-1].startswith(("root", "0:", "0")),
          "runtime runs as a non-root user", user)
    check(re.search(r"^STOPSIGNAL\s+SIGTERM", final, re.M) is not None, "STOPSIGNAL SIGTERM")
    check(re.search(r"^EXPOSE\s+8081", final, re.M) is not None, "EXPOSE 8081")
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(deploy/\S+)", text, re.M):
        check(os.path.exists(os.path.join(root, src)), "COPY source %s exists" % src)


# ------------------------------------------------------------- systemd ----

def check_systemd(root):
    print("systemd: deploy/systemd/couponsvc@.service")
    text = open(os.path.join(root, "deploy/systemd/couponsvc@.service")).read()
    sections, cur = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        if s.startswith("["):
            cur = s.strip("[]")
            sections.setdefault(cur, {})
            continue
        check(cur is not None and "=" in s, "systemd line is KEY=VALUE in a section", s)
        if cur and "=" in s:
            k, v = s.split("=", 1)
            sections[cur].setdefault(k, []).append(v)
    svc = sections.get("Service", {})
    for k, want in (("Restart", "on-failure"), ("KillSignal", "SIGTERM")):
        check(svc.get(k) == [want], "%s=%s" % (k, want), svc.get(k))
    for k in ("TimeoutStopSec", "ExecStart", "NoNewPrivileges", "ProtectSystem"):
        check(k in svc, "[Service] sets %s" % k)
    check("%i" in " ".join(svc.get("Environment", [])), "the instance name sets the port")


def main():
    root = sys.argv[1]
    rendered = sys.argv[2] if len(sys.argv) > 2 else None
    for fn in (check_compose, lambda r: check_k8s(r, rendered), check_dockerfile,
               check_systemd):
        try:
            fn(root)
        except (OSError, yaml.YAMLError) as e:
            check(False, "readable, valid YAML: %s" % e)
    print("check_deploy: %d passed, %d failed" % (passes, len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
