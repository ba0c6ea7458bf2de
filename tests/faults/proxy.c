/*
 * proxy.c: see proxy.h.
 *
 * Data: up to FP__MAX pairs of sockets (client side, server side), each
 * direction with a small buffer of bytes read but not yet written. The loop
 * polls the listening socket and every pair; a pair is closed as soon as
 * either side ends (EOF or error), after nothing more can be moved.
 */
#include "proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tt.h"

#define FP__MAX 128
#define FP__BUF 16384

typedef struct fp__dir {
    char buf[FP__BUF];
    size_t len; /* bytes waiting to be written */
} fp__dir_t;

typedef struct fp__pair {
    int fd[2];       /* 0: client side, 1: server side; -1 when unused */
    fp__dir_t to[2]; /* to[k]: bytes waiting to be written to fd[k] */
} fp__pair_t;

struct fp {
    int listen_fd;
    int port;
    atomic_int target; /* fp_retarget may change it from another thread */
    atomic_int blackhole, stop, accepted;
    pthread_t thread;
    fp__pair_t pairs[FP__MAX];
};

static void fp__close(fp__pair_t *p) {
    for (int k = 0; k < 2; k++) {
        if (p->fd[k] >= 0) {
            close(p->fd[k]);
        }
        p->fd[k] = -1;
        p->to[k].len = 0;
    }
}

static int fp__connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static void fp__accept(fp_t *p) {
    int c = accept(p->listen_fd, NULL, NULL);
    if (c < 0) {
        return;
    }
    fcntl(c, F_SETFL, O_NONBLOCK);
    int s = fp__connect(atomic_load(&p->target));
    int slot = -1;
    for (int i = 0; i < FP__MAX && slot < 0; i++) {
        if (p->pairs[i].fd[0] < 0) {
            slot = i;
        }
    }
    if (s < 0 || slot < 0) {
        close(c); /* the target is down, or too many: like a refusal */
        if (s >= 0) {
            close(s);
        }
        return;
    }
    p->pairs[slot].fd[0] = c;
    p->pairs[slot].fd[1] = s;
    atomic_fetch_add(&p->accepted, 1);
}

/* Moves bytes for one pair given its poll results; returns -1 when the pair
 * must be closed. */
static int fp__pump(fp__pair_t *pr, const short *rev) {
    for (int k = 0; k < 2; k++) {
        int other = 1 - k;
        /* Read from fd[k] into to[other], if there is room. */
        if ((rev[k] & (POLLIN | POLLHUP | POLLERR)) &&
            pr->to[other].len < FP__BUF) {
            ssize_t n = read(pr->fd[k], pr->to[other].buf + pr->to[other].len,
                             FP__BUF - pr->to[other].len);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                return -1;
            }
            if (n > 0) {
                pr->to[other].len += (size_t)n;
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (pr->to[k].len > 0) {
            ssize_t n = write(pr->fd[k], pr->to[k].buf, pr->to[k].len);
            if (n < 0 && errno != EAGAIN && errno != EINTR) {
                return -1;
            }
            if (n > 0) {
                memmove(pr->to[k].buf, pr->to[k].buf + n,
                        pr->to[k].len - (size_t)n);
                pr->to[k].len -= (size_t)n;
            }
        }
    }
    return 0;
}

static void *fp__main(void *arg) {
    fp_t *p = arg;
    struct pollfd pfd[1 + 2 * FP__MAX];
    int owner[1 + 2 * FP__MAX];
    while (!atomic_load(&p->stop)) {
        if (atomic_load(&p->blackhole)) {
            /* Silence: read nothing, write nothing, accept nothing. */
            usleep(2000);
            continue;
        }
        int n = 0;
        pfd[n] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        owner[n++] = -1;
        for (int i = 0; i < FP__MAX; i++) {
            fp__pair_t *pr = &p->pairs[i];
            if (pr->fd[0] < 0) {
                continue;
            }
            for (int k = 0; k < 2; k++) {
                short ev = 0;
                if (pr->to[1 - k].len < FP__BUF) {
                    ev |= POLLIN;
                }
                if (pr->to[k].len > 0) {
                    ev |= POLLOUT;
                }
                pfd[n] = (struct pollfd){.fd = pr->fd[k], .events = ev};
                owner[n++] = i;
            }
        }
        /* Short timeout, so black-hole mode and stop take effect soon. */
        if (poll(pfd, (nfds_t)n, 5) <= 0) {
            continue;
        }
        if (pfd[0].revents & POLLIN) {
            fp__accept(p);
        }
        for (int j = 1; j + 1 < n; j += 2) {
            short rev[2] = {pfd[j].revents, pfd[j + 1].revents};
            if ((rev[0] | rev[1]) == 0) {
                continue;
            }
            fp__pair_t *pr = &p->pairs[owner[j]];
            if (pr->fd[0] >= 0 && fp__pump(pr, rev) < 0) {
                fp__close(pr);
            }
        }
    }
    for (int i = 0; i < FP__MAX; i++) {
        fp__close(&p->pairs[i]);
    }
    return NULL;
}

fp_t *fp_start(int target_port) {
    fp_t *p = calloc(1, sizeof(*p));
    TT_ASSERT(p != NULL);
    for (int i = 0; i < FP__MAX; i++) {
        p->pairs[i].fd[0] = p->pairs[i].fd[1] = -1;
    }
    p->target = target_port;
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    TT_ASSERT(p->listen_fd >= 0 &&
              bind(p->listen_fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
              listen(p->listen_fd, 64) == 0 &&
              getsockname(p->listen_fd, (struct sockaddr *)&a, &len) == 0);
    fcntl(p->listen_fd, F_SETFL, O_NONBLOCK);
    p->port = ntohs(a.sin_port);
    TT_ASSERT(pthread_create(&p->thread, NULL, fp__main, p) == 0);
    return p;
}

int fp_port(const fp_t *p) {
    return p->port;
}

void fp_blackhole(fp_t *p, int on) {
    atomic_store(&p->blackhole, on);
    usleep(10000); /* let a poll in progress finish its round */
}

void fp_retarget(fp_t *p, int target_port) {
    atomic_store(&p->target, target_port);
}

int fp_accepted(fp_t *p) {
    return atomic_load(&p->accepted);
}

void fp_stop(fp_t *p) {
    if (p == NULL) {
        return;
    }
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    free(p);
}
