/*
 * faultproxy.c: the fault tests' TCP proxy (proxy.c) as a program of its
 * own, for the guided tour (deploy/tour/tour.sh), which cuts one instance
 * off from Redis while everything else still reaches it.
 *
 *   faultproxy TARGET_PORT PORT_FILE
 *
 * Listens on a free loopback port, writes that port (and a newline) to
 * PORT_FILE once it accepts, and forwards every connection to
 * 127.0.0.1:TARGET_PORT. SIGUSR1 black-holes (bytes stop both ways, nothing
 * is closed: a network path that drops every packet), SIGUSR2 forwards
 * again, SIGTERM or SIGINT stops it. The signals are taken with sigwait on
 * the main thread; the proxy's own thread never sees them.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "proxy.h"

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: faultproxy TARGET_PORT PORT_FILE\n");
        return 2;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    /* Blocked before the proxy's thread starts, so it inherits the mask. */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    fp_t *p = fp_start(atoi(argv[1]));
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", argv[2]);
    FILE *f = fopen(tmp, "w");
    if (f == NULL || fprintf(f, "%d\n", fp_port(p)) < 0 || fclose(f) != 0 ||
        rename(tmp, argv[2]) != 0) {
        fprintf(stderr, "faultproxy: cannot write %s\n", argv[2]);
        fp_stop(p);
        return 1;
    }
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) {
            continue;
        }
        if (sig == SIGUSR1 || sig == SIGUSR2) {
            fp_blackhole(p, sig == SIGUSR1);
            fprintf(stderr, "faultproxy: %s\n",
                    sig == SIGUSR1 ? "black hole" : "forwarding");
            continue;
        }
        break;
    }
    fp_stop(p);
    return 0;
}
