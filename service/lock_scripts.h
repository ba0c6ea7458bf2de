/*
 * lock_scripts.h: every Lua script the lock runs, in one place.
 *
 * Redis runs a script atomically: no other command executes between its
 * first and last line. Each script below exists because doing the same steps
 * as separate commands leaves a gap another client can fall into; the comment
 * above each one names that gap.
 *
 * Under Redlock (lock_redlock.c) every script runs on each node on its own;
 * what makes the whole safe across nodes is argued at the top of that file.
 *
 * Keys (the braces are a Redis Cluster hash tag: both keys of a coupon hash to
 * one slot, so a script may touch both):
 *   coupon:{ID}:lock      the lock; value = the holder's random token
 *   coupon:{ID}:fence     the fencing counter; no TTL, must never be evicted
 *   coupon:{ID}:released  pub/sub channel announcing releases
 */
#ifndef COUPONSVC_LOCK_SCRIPTS_H
#define COUPONSVC_LOCK_SCRIPTS_H

/*
 * ACQUIRE. KEYS[1] lock, KEYS[2] fence; ARGV[1] token, ARGV[2] TTL in ms.
 * Returns {1, fence} when granted, {0, holder's PTTL in ms} when busy.
 *
 * Race closed: granting the lock and drawing the fence must be one step. As
 * two commands (SET NX, then INCR) a holder could pause between them while
 * its lease expires and a second client acquires and INCRs: the first would
 * then draw a HIGHER fence than the newer holder and PostgreSQL would take
 * the stale write and refuse the current one, the opposite of fencing. Inside
 * one script, fence order is grant order.
 *
 * The busy answer carries PTTL so the waiter never sleeps past the moment the
 * lock can expire. If INCR fails (the fence key holds a non-number), the lock
 * is deleted again so that no lease exists that has no fence.
 *
 * A key that already holds OUR token is granted again, with a new TTL and a
 * new fence. It can only be our own earlier copy of this same request: sent
 * on a connection that dropped before its reply came, and repeated on a
 * fresh one (lock_redis__command in lock_redis.c). Answering "busy" there would
 * make the client wait a full TTL for a lock it holds itself. The new fence is
 * above the one the lost reply carried, and nobody else was granted in between
 * (the key was ours all along), so fence order is still grant order.
 */
#define LOCK_SCRIPT_ACQUIRE                                                    \
    "local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])\n"    \
    "if not ok and redis.call('GET', KEYS[1]) == ARGV[1] then\n"               \
    "  ok = redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 1\n"                    \
    "end\n"                                                                    \
    "if ok then\n"                                                             \
    "  local f = redis.pcall('INCR', KEYS[2])\n"                               \
    "  if type(f) == 'table' and f.err then\n"                                 \
    "    redis.call('DEL', KEYS[1])\n"                                         \
    "    return f\n"                                                           \
    "  end\n"                                                                  \
    "  return {1, f}\n"                                                        \
    "end\n"                                                                    \
    "return {0, redis.call('PTTL', KEYS[1])}\n"

/*
 * EXTEND. KEYS[1] lock; ARGV[1] token, ARGV[2] TTL in ms.
 * Returns 1 when the TTL was reset, 0 when the lock is not ours any more.
 *
 * Race closed: a plain PEXPIRE would extend whoever holds the key. If our
 * lease expired and another client acquired, a blind PEXPIRE (or a re-SET)
 * would stretch or steal the NEW holder's lock. Comparing the token first,
 * atomically, makes a late renewal a no-op, and tells the watchdog the lease
 * is lost.
 */
#define LOCK_SCRIPT_EXTEND                                                     \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"                          \
    "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"                       \
    "end\n"                                                                    \
    "return 0\n"

/*
 * RELEASE. KEYS[1] lock; ARGV[1] token, ARGV[2] release channel.
 * The message is the released token: under Redlock one release is
 * announced by every node that held it, and the waiters' subscriber
 * counts the announcements of one token as one release (lock_wait.c).
 * Returns 0 when the lock was not ours; when we deleted it, 1 + the number
 * of subscribers the PUBLISH reached (lock_wait.c reads it: subscribers
 * beyond our own process's are other processes waiting).
 *
 * Race closed: GET-then-DEL as two commands can delete a lock that expired
 * and was granted to someone else between the GET and the DEL, letting a
 * third client in beside the new holder. The compare and the delete must be
 * one step. The PUBLISH is in the same step so a waiter is woken only by a
 * release that really happened.
 */
#define LOCK_SCRIPT_RELEASE                                                    \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"                          \
    "  redis.call('DEL', KEYS[1])\n"                                           \
    "  return 1 + redis.call('PUBLISH', ARGV[2], ARGV[1])\n"                   \
    "end\n"                                                                    \
    "return 0\n"

/*
 * RAISE FENCE. KEYS[1] fence; ARGV[1] the floor (PostgreSQL's last_fence).
 * Returns the counter's value afterwards.
 *
 * Race closed: after Redis lost the counter (restart without persistence,
 * failover to a lagging replica, FLUSHALL), INCR starts again near 0, below
 * the high-water mark in PostgreSQL, and every write would be refused. Raising
 * it with GET-then-SET could move the counter DOWN if another instance raised
 * it or INCRed past our floor in between; compare-and-raise in one step only
 * ever moves it up, so fences stay monotonic.
 */
#define LOCK_SCRIPT_RAISE_FENCE                                                \
    "local cur = tonumber(redis.call('GET', KEYS[1]) or '0')\n"                \
    "local floor = tonumber(ARGV[1])\n"                                        \
    "if cur == nil then\n"                                                     \
    "  return redis.error_reply('fence counter is not a number')\n"            \
    "end\n"                                                                    \
    "if cur < floor then\n"                                                    \
    "  redis.call('SET', KEYS[1], ARGV[1])\n"                                  \
    "  return floor\n"                                                         \
    "end\n"                                                                    \
    "return cur\n"

/*
 * UNDO (Redlock only). KEYS[1] lock; ARGV[1] token. Returns 1 when it
 * deleted our key, 0 when the key was not ours.
 *
 * RELEASE without the announcement, for an acquire that never became a
 * usable lease (no majority granted it, its write-back found no majority,
 * or its validity ran out first) and takes back what it got on some nodes.
 * Compare-and-delete for the same reason as RELEASE. No PUBLISH: a partial
 * grant never was a lock, and announcing its end would wake a waiter to
 * take the node just freed while the real holder still holds a majority;
 * that waiter's attempt fails too and its undo would wake the next one, a
 * storm for as long as the holder holds the lock.
 */
#define LOCK_SCRIPT_UNDO                                                       \
    "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"                          \
    "  return redis.call('DEL', KEYS[1])\n"                                    \
    "end\n"                                                                    \
    "return 0\n"

/*
 * WRITE-BACK (Redlock only). KEYS[1] lock, KEYS[2] fence; ARGV[1] token,
 * ARGV[2] the fence granted (the highest any granting node drew).
 * Returns 1 when the lock still held our token and the counter is now at
 * least the fence ("raised while held"), 0 when the lock is not ours.
 *
 * Race closed: each node INCRs its own counter, so the nodes of a majority
 * draw different numbers and a later majority could draw a LOWER maximum
 * than ours (it may overlap ours only in a node whose counter was low).
 * Raising every granting node to our fence makes any node where a later
 * holder's SET NX succeeds already stand at our fence, IF the raise happened
 * before that SET NX. Checking our token in the same step is what makes it
 * so: the raise is applied only while our key is still there, and the
 * later SET NX succeeds only after our key is gone. An unconditional raise
 * (or a GET, then a SET) could land on a node after another client's grant
 * there, too late to lift that client's fence above ours.
 */
#define LOCK_SCRIPT_WRITEBACK                                                  \
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then\n"                          \
    "  return 0\n"                                                             \
    "end\n"                                                                    \
    "local cur = tonumber(redis.call('GET', KEYS[2]) or '0')\n"                \
    "if cur == nil then\n"                                                     \
    "  return redis.error_reply('fence counter is not a number')\n"            \
    "end\n"                                                                    \
    "if cur < tonumber(ARGV[2]) then\n"                                        \
    "  redis.call('SET', KEYS[2], ARGV[2])\n"                                  \
    "end\n"                                                                    \
    "return 1\n"

#endif
