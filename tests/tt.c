/*
 * tt.c: see tt.h.
 */
#include "tt.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mono.h"

#define TT__MAX 256

static tt_test_t tt__tests[TT__MAX];
static int tt__n;

void (*tt_on_failure)(void);

void tt__register(const char *name, void (*fn)(void), unsigned timeout_s) {
    if (tt__n == TT__MAX) {
        fprintf(stderr, "tt: too many tests\n");
        exit(2);
    }
    tt__tests[tt__n++] = (tt_test_t){name, fn, timeout_s};
}

void tt__fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "    %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (tt_on_failure != NULL) {
        void (*f)(void) = tt_on_failure;
        tt_on_failure = NULL; /* a failure inside it must not loop */
        f();
    }
    exit(1);
}

static int tt__selected(const char *name, int argc, char **argv) {
    if (argc <= 1) {
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strstr(name, argv[i]) != NULL) {
            return 1;
        }
    }
    return 0;
}

static double tt__now(void) {
    return (double)mono_ns() / (double)MONO_S;
}

const char *tt_current = "";

/* Runs one test in a child; returns 1 if it passed. */
static int tt__run(const tt_test_t *t) {
    fflush(stdout);
    fflush(stderr);
    double start = tt__now();
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 0;
    }
    if (pid == 0) {
        setpgid(0, 0);
        tt_current = t->name;
        t->fn();
        fflush(stdout);
        _exit(0);
    }
    setpgid(pid, pid);

    /* The parent enforces the timeout, so a test cannot disable it. */
    int status = 0;
    int timed_out = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid) {
            break;
        }
        if (tt__now() - start > t->timeout_s) {
            timed_out = 1;
            kill(-pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        usleep(20000);
    }
    /* Whatever the test left behind in its group goes too. */
    kill(-pid, SIGKILL);

    double ms = (tt__now() - start) * 1000.0;
    int ok = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) {
        printf("ok    %-44s %8.0f ms\n", t->name, ms);
    } else if (timed_out) {
        printf("FAIL  %-44s timed out after %u s\n", t->name, t->timeout_s);
    } else if (WIFSIGNALED(status)) {
        printf("FAIL  %-44s killed by signal %d\n", t->name, WTERMSIG(status));
    } else {
        printf("FAIL  %-44s %8.0f ms\n", t->name, ms);
    }
    fflush(stdout);
    return ok;
}

int tt_main(int argc, char **argv, int (*setup)(void), void (*teardown)(void)) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int selected = 0;
    for (int i = 0; i < tt__n; i++) {
        selected += tt__selected(tt__tests[i].name, argc, argv);
    }
    if (selected > 0 && setup != NULL && setup() != 0) {
        printf("setup failed\n0 passed, %d failed\n", selected);
        return 1;
    }
    int passed = 0, failed = 0;
    for (int i = 0; i < tt__n; i++) {
        if (!tt__selected(tt__tests[i].name, argc, argv)) {
            continue;
        }
        if (tt__run(&tt__tests[i])) {
            passed++;
        } else {
            failed++;
        }
    }
    if (selected > 0 && teardown != NULL) {
        teardown();
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 && passed > 0 ? 0 : 1;
}
