/* A wall-clock shim for tests: LD_PRELOAD it into one process tree to move its
 * CLOCK_REALTIME (clock_gettime, gettimeofday, time) by an offset, leaving
 * CLOCK_MONOTONIC and every sleep/wait untouched.
 *
 * FORKQ_TIMESHIM_OFFSET  seconds (float) added to the wall clock, or
 * FORKQ_TIMESHIM_FILE    a file holding that number, re-read at most every 20 ms
 *                        (a test writes it to step the clock of running processes).
 *
 * Why not Debian's libfaketime (0.9.10): with FAKETIME_DONT_FAKE_MONOTONIC=1
 * Python's time.sleep fails with EINVAL (clock_nanosleep), and without it
 * threading waits (pthread_cond_timedwait) hang.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);
static clock_gettime_fn real_clock_gettime;
static double cached_offset;
static double next_read = -1.0;

static void init(void) {
    if (!real_clock_gettime) real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
}

static double offset(void) {
    const char *fixed = getenv("FORKQ_TIMESHIM_OFFSET");
    if (fixed) return atof(fixed);
    const char *path = getenv("FORKQ_TIMESHIM_FILE");
    if (!path) return 0.0;
    struct timespec m;
    real_clock_gettime(CLOCK_MONOTONIC, &m);
    double now = m.tv_sec + m.tv_nsec / 1e9;
    if (now >= next_read) {
        FILE *f = fopen(path, "r");
        if (f) {
            double v;
            if (fscanf(f, "%lf", &v) == 1) cached_offset = v;
            fclose(f);
        }
        next_read = now + 0.02;
    }
    return cached_offset;
}

static void shift(struct timespec *ts) {
    double off = offset();
    long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + (long long)(off * 1e9);
    ts->tv_sec = ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    init();
    int rc = real_clock_gettime(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) shift(ts);
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    (void)tz;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
