// prlimit.so: loaded into CRIU (LD_PRELOAD) by a shim whose root lacks
// CAP_SYS_RESOURCE. CRIU reads every dumped task's resource limits with
// prlimit64(pid, resource, NULL, &old); without CAP_SYS_RESOURCE the kernel
// refuses that (EPERM) for a task of another uid, so CRIU cannot dump a job
// that runs as its owner. When, and only when, that call fails with EPERM,
// this answers it from /proc/PID/limits, which shows the same values to
// everyone. Nothing else is changed. `go generate ./shim/criu/...` rebuilds
// prlimit.so from this file.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
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
