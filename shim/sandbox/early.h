// Helpers of the two constructors that run before the Go runtime
// (initearly.c, execearly.c).

#ifndef TORPOR_EARLY_H
#define TORPOR_EARLY_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

// EARLY_REPORT_FD is the report pipe of the sandbox's init and of the
// command's process (initReportFD).
#define EARLY_REPORT_FD 3

// early_errstr is strerror as Go spells it: the first letter in lower case.
static inline const char *early_errstr(int err, char *buf, size_t len) {
	snprintf(buf, len, "%s", strerror(err));
	if (buf[0] >= 'A' && buf[0] <= 'Z')
		buf[0] += 'a' - 'A';
	return buf;
}

// early_say writes why the command does not run to the report pipe and,
// with the init's prefix, to standard error.
static inline void early_say(const char *fmt, va_list ap) {
	char msg[1024];
	int n = vsnprintf(msg, sizeof msg, fmt, ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof msg)
		n = sizeof msg - 1;
	dprintf(2, "torpor sandbox init: %s\n", msg);
	ssize_t w = write(EARLY_REPORT_FD, msg, n);
	(void)w;
}

#endif
