// prlimit.so: loaded into CRIU (LD_PRELOAD) by a shim whose root lacks
// CAP_SYS_RESOURCE. CRIU reads every dumped task's resource limits with
// prlimit64(pid, resource, NULL, &old); without CAP_SYS_RESOURCE the kernel
// refuses that (EPERM) for a task of another uid, so CRIU cannot dump a job
// that runs as its owner. When, and only when, that call fails with EPERM,
// this answers it from /proc/PID/limits, which shows the same values to
// everyone.
//
// The same missing capability caps the pipes CRIU may size with
// F_SETPIPE_SZ at /proc/sys/fs/pipe-max-size (1 MiB by default). CRIU grows
// its dump pipes step by step and copes with a refusal, but the page server
// of a lazy (post-copy) dump asks for a ~3 MiB pipe at once, ignores the
// refusal and fails its first page request (splice: Bad file descriptor).
// When, and only when, F_SETPIPE_SZ fails with EPERM for more than
// pipe-max-size and more than twice the pipe's size, this asks again for
// pipe-max-size: the pages CRIU tees through that pipe come from its own
// dump pipes, which pipe-max-size bounds too. CRIU grows its dump pipes by
// doubling them (or less), and replaces a pipe that cannot grow by a new
// one: those refusals stand. Nothing else is changed. `go generate ./shim/criu/...`
// rebuilds prlimit.so from this file.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>

// limits_of reads resource res of pid from /proc/PID/limits: a header line,
// then one line per resource in the kernel's order, the values from column
// 26 on ("unlimited" or a number).
static int limits_of(long pid, long res, struct rlimit *out)
{
	char path[64], line[256], soft[32], hard[32];
	FILE *f;
	int i = -1, ret = -1;

	snprintf(path, sizeof(path), "/proc/%ld/limits", pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (i++ != res)
			continue;
		if (strlen(line) < 26 || sscanf(line + 26, "%31s %31s", soft, hard) != 2)
			break;
		out->rlim_cur = strcmp(soft, "unlimited") ? strtoull(soft, NULL, 10) : RLIM_INFINITY;
		out->rlim_max = strcmp(hard, "unlimited") ? strtoull(hard, NULL, 10) : RLIM_INFINITY;
		ret = 0;
		break;
	}
	fclose(f);
	return ret;
}

long syscall(long nr, ...)
{
	static long (*real)(long, ...);
	long a[6], r;
	va_list ap;
	int i;

	va_start(ap, nr);
	for (i = 0; i < 6; i++)
		a[i] = va_arg(ap, long);
	va_end(ap);
	if (!real)
		real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
	r = real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	if (r == -1 && errno == EPERM && nr == SYS_prlimit64 && a[2] == 0 && a[3] != 0) {
		if (limits_of(a[0], a[1], (struct rlimit *)a[3]) == 0) {
			errno = 0;
			return 0;
		}
		errno = EPERM;
	}
	return r;
}

// pipe_max is /proc/sys/fs/pipe-max-size, or -1.
static long pipe_max(void)
{
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

// fcntl_via calls the real fcntl (name), with the F_SETPIPE_SZ fallback of fcntl and fcntl64.
static int fcntl_via(const char *name, int (**real)(int, int, ...), int fd, int cmd, long arg)
{
	int r, cur;
	long max;

	if (!*real)
		*real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, name);
	r = (*real)(fd, cmd, arg);
	if (r == -1 && errno == EPERM && cmd == F_SETPIPE_SZ) {
		max = pipe_max();
		cur = (*real)(fd, F_GETPIPE_SZ);
		if (max > 0 && arg > max && cur > 0 && arg > 2L * cur)
			return (*real)(fd, cmd, max);
		errno = EPERM;
	}
	return r;
}

int fcntl64(int fd, int cmd, ...)
{
	static int (*real)(int, int, ...);
	va_list ap;
	long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	return fcntl_via("fcntl64", &real, fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...)
{
	static int (*real)(int, int, ...);
	va_list ap;
	long arg;

	va_start(ap, cmd);
	arg = va_arg(ap, long);
	va_end(ap);
	return fcntl_via("fcntl", &real, fd, cmd, arg);
}
