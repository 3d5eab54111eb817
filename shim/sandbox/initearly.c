// The sandbox's init, PID 1 of its PID namespace (see Start): it sets the
// hostname, starts the command's process (torpor-exec, execearly.c), reaps
// every child, writes the command's exit status and exits with it. It runs
// as a constructor and never returns, so the Go runtime never starts in it:
// a job-node's start does not pay for the runtime's start (about 30 ms
// here), and CRIU dumps and restores one small single-threaded process
// where the Go runtime's would have had several threads and over a GB of
// reserved address space (a lazy dump spent 26-42 ms on each Go process).
//
// argv: torpor-init HOSTNAME OUTPUT EXITFILE UID GID GROUPS DIR COMMAND [ARG...]
//   HOSTNAME: set in the init's UTS namespace, "" to leave it;
//   OUTPUT: the file the command's stdout and stderr append to, "" to
//     pass on the init's own;
//   EXITFILE: receives the exit status just before the init exits, "" for
//     none;
//   the rest: torpor-exec's arguments (execearly.c).
// File descriptor 3 is the report pipe (as for torpor-exec), 4 the
// command's environment; both go to the command's process. The init's own
// environment is empty.
//
// The init stays root and runs nothing but its loop: CRIU's parasite, run
// inside the root task of the dumped PID namespace, mounts a procfs of that
// namespace, which takes CAP_SYS_ADMIN (the sandbox has no mount namespace
// with a /proc of its own). It makes its procfs mount point in the init's
// working directory: "/", one of root's, never the owner's.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "early.h"

#define INIT_REPORT_FD EARLY_REPORT_FD
#define INIT_ENV_FD 4
#define INIT_SETUP_FAILED 125

// init_say writes the reason the command does not run to the report pipe
// and to the init's output.
static void init_say(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	early_say(fmt, ap);
	va_end(ap);
}

// write_exit_file writes the status in place, O_NOFOLLOW: the shim created
// the file in a directory only root may change. A reader sees no status or
// all of it (one small write into an empty file).
static void write_exit_file(const char *path, int code) {
	char e[128], buf[16];
	int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		dprintf(2, "torpor sandbox init: write exit status: open %s: %s\n", path, early_errstr(errno, e, sizeof e));
		return;
	}
	int n = snprintf(buf, sizeof buf, "%d\n", code);
	if (write(fd, buf, n) != n || fsync(fd) != 0)
		dprintf(2, "torpor sandbox init: write exit status: %s: %s\n", path, early_errstr(errno, e, sizeof e));
	close(fd);
}

// init_run is the init's life; it returns the exit status.
static int init_run(char **argv) {
	const char *hostname = argv[1], *output = argv[2];
	char e[128];
	if (hostname[0] != '\0' && sethostname(hostname, strlen(hostname)) != 0) {
		init_say("set hostname: %s", early_errstr(errno, e, sizeof e));
		return INIT_SETUP_FAILED;
	}
	if (chdir("/") != 0) {
		init_say("chdir /: %s", early_errstr(errno, e, sizeof e));
		return INIT_SETUP_FAILED;
	}
	int out = -1;
	if (output[0] != '\0') {
		// The shim made it, for the owner, in a directory only root may
		// change.
		out = open(output, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (out < 0) {
			init_say("open output: open %s: %s", output, early_errstr(errno, e, sizeof e));
			return INIT_SETUP_FAILED;
		}
	}
	// argv[3] (EXITFILE) is replaced by torpor-exec's argv[0].
	argv[3] = "torpor-exec";
	char *no_env[] = {NULL};
	pid_t main_pid = fork();
	if (main_pid < 0) {
		init_say("start the command's process: fork: %s", early_errstr(errno, e, sizeof e));
		return INIT_SETUP_FAILED;
	}
	if (main_pid == 0) {
		if (out >= 0 && (dup2(out, 1) < 0 || dup2(out, 2) < 0)) {
			init_say("start the command's process: %s", early_errstr(errno, e, sizeof e));
			_exit(INIT_SETUP_FAILED);
		}
		if (out >= 0)
			close(out);
		execve("/proc/self/exe", &argv[3], no_env);
		init_say("start the command's process: exec /proc/self/exe: %s", early_errstr(errno, e, sizeof e));
		_exit(INIT_SETUP_FAILED);
	}
	close(INIT_REPORT_FD);
	close(INIT_ENV_FD);
	if (out >= 0)
		close(out);
	for (;;) {
		int ws;
		pid_t pid = wait4(-1, &ws, 0, NULL);
		if (pid < 0 && errno == EINTR)
			continue;
		if (pid < 0)
			return 0; // ECHILD: nothing left to wait for
		if (pid != main_pid)
			continue;
		if (WIFEXITED(ws))
			return WEXITSTATUS(ws);
		if (WIFSIGNALED(ws))
			return 128 + WTERMSIG(ws);
	}
}

__attribute__((constructor)) static void torpor_init(int argc, char **argv) {
	if (argc < 1 || argv[0] == NULL || strcmp(argv[0], "torpor-init") != 0)
		return;
	if (fcntl(INIT_REPORT_FD, F_GETFD) < 0 || fcntl(INIT_ENV_FD, F_GETFD) < 0)
		_exit(INIT_SETUP_FAILED); // not started by a shim
	// Whatever the shim inherited without close-on-exec (from its own
	// parent) ends here, not in a job's tasks.
	close_range(INIT_ENV_FD + 1, ~0U, 0);
	int code;
	if (argc < 9) {
		init_say("torpor-init: %d arguments, want HOSTNAME OUTPUT EXITFILE UID GID GROUPS DIR COMMAND [ARG...]", argc - 1);
		code = INIT_SETUP_FAILED;
	} else {
		char *exit_file = argv[3];
		code = init_run(argv);
		if (exit_file[0] != '\0')
			write_exit_file(exit_file, code);
	}
	_exit(code);
}
