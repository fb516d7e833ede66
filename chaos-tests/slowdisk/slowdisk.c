/*
 * slowdisk: an LD_PRELOAD shim that makes a process's disk syncs slow on demand.
 *
 * lockstep-chaos starts every lockstepd with this library and LOCKSTEP_SLOWDISK_FILE naming a
 * small file. Before each fsync / fdatasync / syncfs / sync_file_range, the shim reads the
 * file: a positive number there is a delay in milliseconds added to that call. The slow-disk
 * fault writes a number, healing writes 0. RocksDB syncs its write-ahead log with fdatasync
 * (or fsync), so a slow sync is what a slow or overloaded disk looks like to Raft's log.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long delay_ms(void) {
    const char *path = getenv("LOCKSTEP_SLOWDISK_FILE");
    if (path == NULL) {
        return 0;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char buf[32];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    long ms = strtol(buf, NULL, 10);
    return ms > 0 && ms < 60000 ? ms : 0;
}

static void pause_if_slow(void) {
    long ms = delay_ms();
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0) {
        }
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    }
    pause_if_slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    }
    pause_if_slow();
    return real(fd);
}

int syncfs(int fd) {
    static int (*real)(int);
    if (real == NULL) {
        real = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    }
    pause_if_slow();
    return real(fd);
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    static int (*real)(int, off_t, off_t, unsigned int);
    if (real == NULL) {
        real = (int (*)(int, off_t, off_t, unsigned int))dlsym(RTLD_NEXT, "sync_file_range");
    }
    pause_if_slow();
    return real(fd, offset, nbytes, flags);
}
