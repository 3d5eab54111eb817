// The command's process of a sandbox, before it is the command (see
// initearly.c): it becomes the job's owner for good and executes the command.
// It runs as a constructor, before the Go runtime starts, so that a job-node
// does not pay for a second start of the torpor binary's runtime and package
// initialisation (about 30 ms here) before its command runs.
//
// argv: torpor-exec UID GID GROUPS DIR COMMAND [ARG...]
//   UID, GID: decimal, or "-" to keep root's (a root job);
//   GROUPS: decimal gids separated by commas, "-" for none;
//   DIR: the working directory, "" to keep the init's ("/").
// File descriptor 3 is the report pipe: "exec\n" just before the exec (the
// pipe then closes with it), or why the command does not run. File
// descriptor 4 holds the command's environment, each entry ended by a NUL.
// This process's own environment is empty: it starts as root, and the
// dynamic loader would act on the owner's LD_PRELOAD, LD_LIBRARY_PATH or
// GLIBC_TUNABLES before this constructor runs.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "early.h"

#define REPORT_FD EARLY_REPORT_FD
#define ENV_FD 4
#define MAX_GROUPS 65536
#define MAX_ENV (64 << 20)

// fail writes the reason, as the init writes its own (init_say), and
// exits 127.
static void fail(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	early_say(fmt, ap);
	va_end(ap);
	_exit(127);
}

// parse_id reads a decimal id, the whole string.
static int parse_id(const char *s, unsigned long *out) {
	char *end;
	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > (unsigned long)UINT_MAX - 1)
		return -1;
	*out = v;
	return 0;
}

// cap_last_cap is the highest capability number this kernel knows.
static int cap_last_cap(void) {
	char buf[32];
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *end;
	long v = strtol(buf, &end, 10);
	if (end == buf || v < 0 || v > 1023)
		return -1;
	return (int)v;
}

// check_dropped fails unless this process holds no capability at all and
// cannot gain one: every Cap* line of its status zero, NoNewPrivs 1.
static void check_dropped(unsigned long uid) {
	static char buf[8192];
	int fd = open("/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		fail("become uid %lu: read own status: %s", uid, strerror(errno));
	size_t have = 0;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		have += n;
	}
	close(fd);
	buf[have] = '\0';
	int caps = 0, nnp = 0;
	for (char *line = buf; line && *line;) {
		char *next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strncmp(line, "Cap", 3) == 0) {
			char *v = strchr(line, ':');
			if (!v)
				fail("become uid %lu: bad status line %s", uid, line);
			caps++;
			for (v++; *v; v++) {
				if (*v != '0' && *v != '\t' && *v != ' ')
					fail("become uid %lu: still holds capabilities after dropping them: %s", uid, line);
			}
		} else if (strncmp(line, "NoNewPrivs:", 11) == 0) {
			nnp = strtol(line + 11, NULL, 10) == 1;
		}
		line = next;
	}
	if (caps < 5)
		fail("become uid %lu: found %d capability sets in its status, want 5", uid, caps);
	if (!nnp)
		fail("become uid %lu: no_new_privs is not set", uid);
}

// become turns this process into uid, gid and groups for good:
// no_new_privs, an empty capability bounding set, the groups, gid and uid.
// From a uid of 0 to none, the permitted, effective and ambient
// capabilities are cleared; check_dropped verifies it.
static void become(const char *uids, const char *gids, const char *groups) {
	unsigned long uid, gid;
	if (parse_id(uids, &uid) != 0)
		fail("bad uid %s", uids);
	if (parse_id(gids, &gid) != 0)
		fail("become uid %lu: bad gid %s", uid, gids);
	static gid_t list[MAX_GROUPS];
	size_t ngroups = 0;
	if (strcmp(groups, "-") != 0) {
		char *copy = strdup(groups);
		if (!copy)
			fail("become uid %lu: out of memory", uid);
		char *save = NULL;
		for (char *g = strtok_r(copy, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
			unsigned long v;
			if (ngroups == MAX_GROUPS || parse_id(g, &v) != 0)
				fail("become uid %lu: bad groups %s", uid, groups);
			list[ngroups++] = (gid_t)v;
		}
		free(copy);
	}
	char e[128];
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		fail("become uid %lu: set no_new_privs: %s", uid, early_errstr(errno, e, sizeof e));
	int last = cap_last_cap();
	if (last < 0)
		fail("become uid %lu: read /proc/sys/kernel/cap_last_cap", uid);
	for (int c = 0; c <= last; c++) {
		if (prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0)
			fail("become uid %lu: drop capability %d from the bounding set: %s", uid, c, early_errstr(errno, e, sizeof e));
	}
	if (setgroups(ngroups, list) != 0)
		fail("become uid %lu: set groups %s: %s", uid, groups, early_errstr(errno, e, sizeof e));
	if (setresgid(gid, gid, gid) != 0)
		fail("become uid %lu: set gid %lu: %s", uid, gid, early_errstr(errno, e, sizeof e));
	if (setresuid(uid, uid, uid) != 0)
		fail("become uid %lu: set uid %lu: %s", uid, uid, early_errstr(errno, e, sizeof e));
	check_dropped(uid);
}

// read_env reads the command's environment from ENV_FD and closes it.
static char **read_env(void) {
	struct stat st;
	if (fstat(ENV_FD, &st) != 0)
		fail("read the command's environment: %s", strerror(errno));
	if (st.st_size < 0 || st.st_size > MAX_ENV)
		fail("the command's environment is %lld bytes, more than %d", (long long)st.st_size, MAX_ENV);
	size_t size = st.st_size;
	char *buf = malloc(size + 1);
	if (!buf)
		fail("read the command's environment: out of memory");
	size_t have = 0;
	while (have < size) {
		ssize_t n = pread(ENV_FD, buf + have, size - have, have);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			fail("read the command's environment: %s", n < 0 ? strerror(errno) : "short read");
		have += n;
	}
	close(ENV_FD);
	if (size > 0 && buf[size - 1] != '\0')
		fail("the command's environment does not end with a NUL");
	size_t count = 0;
	for (size_t i = 0; i < size; i++)
		count += buf[i] == '\0';
	char **env = calloc(count + 1, sizeof *env);
	if (!env)
		fail("read the command's environment: out of memory");
	size_t k = 0;
	for (size_t i = 0; i < size; i += strlen(buf + i) + 1)
		env[k++] = buf + i;
	return env;
}

__attribute__((constructor)) static void torpor_exec(int argc, char **argv) {
	if (argc < 1 || argv[0] == NULL || strcmp(argv[0], "torpor-exec") != 0)
		return;
	if (fcntl(REPORT_FD, F_SETFD, FD_CLOEXEC) != 0)
		_exit(127); // no report pipe: not started by a sandbox init
	if (argc < 6)
		fail("torpor-exec: %d arguments, want UID GID GROUPS DIR COMMAND [ARG...]", argc - 1);
	if (strcmp(argv[1], "-") != 0)
		become(argv[1], argv[2], argv[3]);
	char **env = read_env(); // the owner's: read as the owner
	char e[128];
	if (argv[4][0] != '\0' && chdir(argv[4]) != 0)
		fail("working directory %s: %s (as uid %d)", argv[4], early_errstr(errno, e, sizeof e), (int)getuid());
	if (write(REPORT_FD, "exec\n", 5) != 5)
		_exit(127);
	execve(argv[5], &argv[5], env);
	fail("start command: exec %s: %s (as uid %d)", argv[5], early_errstr(errno, e, sizeof e), (int)getuid());
}
