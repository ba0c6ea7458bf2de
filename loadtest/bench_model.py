#!/usr/bin/env python3
"""bench_model.py: a discrete-event model of the bench's hot closed loop.

    loadtest/bench_model.py [SECONDS]

N clients (256) each send a claim, wait for its answer and send the next,
through a balancer that picks one of R replicas (3) at random. Each
replica queues its claims; one lock serialises the replicas' batches. A
batch of k claims holds the lock for (A + B*k) ms, +-JITTER, plus a
handoff. Two handoff rules: "race" (after a release the replicas that
wait race for the lock, and the releaser only keeps out of the very next
grant: the old rule) and "round" (the grants go round the replicas that
wait: the rule lock_wait.c has now), each with batches of at most 32 and
256. Prints claims/s, p50, p99 and p99/p50 for the four.

It is a model, not a measurement: the constants are the 2-core VM's
rough costs with a durable PostgreSQL (an fsync per batch), chosen so that
"race, 32" lands near what make bench measured for the old tree (about
7,200 claims/s, p50 31 ms, p99 98 ms). It shows which of the two changes
moves p99/p50, and by how much, on a machine with no other load.

Standard library only.
"""
import heapq
import random
import sys

N, R = 256, 3
A_MS, B_MS, JITTER, HANDOFF_MS, NET_MS = 3.0, 0.03, 0.3, 0.3, 0.5


def run(batch_max, rule, seconds, seed=1):
    rnd = random.Random(seed)
    queues = [[] for _ in range(R)]  # arrival times, FIFO
    ev = []  # (time ms, seq, kind, data)
    seq = 0

    def push(t, kind, data):
        nonlocal seq
        seq += 1
        heapq.heappush(ev, (t, seq, kind, data))

    for _ in range(N):
        push(rnd.random() * 2, "arrive", rnd.randrange(R))
    busy, last, lat = False, None, []

    def pick():
        waiting = [r for r in range(R) if queues[r]]
        if not waiting:
            return None
        if rule == "round":
            for k in range(1, R + 1):
                r = ((last if last is not None else -1) + k) % R
                if r in waiting:
                    return r
        others = [r for r in waiting if r != last]
        return rnd.choice(others) if others else waiting[0]

    end = seconds * 1000.0
    while ev:
        now, _, kind, data = heapq.heappop(ev)
        if now > end:
            break
        if kind == "arrive":
            queues[data].append(now)
        else:  # a batch's answers
            r, batch = data
            for sent in batch:
                lat.append(now + NET_MS - sent)
                push(now + 2 * NET_MS * rnd.uniform(0.5, 1.5), "arrive",
                     rnd.randrange(R))
            busy, last = False, r
        if not busy:
            r = pick()
            if r is not None:
                batch, queues[r] = queues[r][:batch_max], queues[r][batch_max:]
                hold = (A_MS + B_MS * len(batch)) * rnd.uniform(
                    1 - JITTER, 1 + JITTER) + HANDOFF_MS
                busy = True
                push(now + hold, "done", (r, batch))
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    return len(lat) / seconds, p50, p99


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    print("%-6s %5s %10s %8s %8s %8s" % ("rule", "batch", "claims/s",
                                          "p50 ms", "p99 ms", "p99/p50"))
    for batch_max in (32, 256):
        for rule in ("race", "round"):
            rate, p50, p99 = run(batch_max, rule, seconds)
            print("%-6s %5d %10.0f %8.1f %8.1f %8.2f" % (
                rule, batch_max, rate, p50, p99, p99 / p50))


if __name__ == "__main__":
    main()
