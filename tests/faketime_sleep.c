/* Preloaded before libfaketime by `make test-clock`: libfaketime 0.9.10 turns an absolute sleep on
 * CLOCK_MONOTONIC into EINVAL when the monotonic clock is not faked (--exclude-monotonic), and
 * Python's time.sleep() is exactly that sleep. The monotonic clock is not moved, so such a
 * sleep goes to the kernel unchanged; every other clock goes on to libfaketime. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request,
                    struct timespec *remain) {
    if (clock == CLOCK_MONOTONIC) {
        return syscall(SYS_clock_nanosleep, clock, flags, request, remain) == 0 ? 0 : errno;
    }
    int (*next)(clockid_t, int, const struct timespec *, struct timespec *) =
        (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
    return next(clock, flags, request, remain);
}
