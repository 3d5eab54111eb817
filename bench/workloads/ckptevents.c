//go:build ignore

/*
 * ckptevents — torpor test workload: an MPI program that takes part in torpor's
 * checkpoint protocol through PMIx events (Open MPI ranks under pmixd).
 *
 * At start every rank (unless -n) registers a PMIx event handler, first in line
 * (PMIX_EVENT_HDLR_FIRST), for
 *   PMIX_JCTRL_CHECKPOINT (-106): a checkpoint is coming; the id is the string
 *       info PMIX_JOB_CTRL_CHECKPOINT ("pmix.jctrl.ckpt");
 *   PMIX_ERR_PROC_RESTART (-4): this process was restored from a checkpoint; the
 *       id is PMIX_JOB_CTRL_CHECKPOINT too;
 * and, when run by torpor's pmixd (TORPOR_CKPT_EVENTS=1 in its environment),
 * opts in to being waited for: it sends PMIX_JCTRL_CHECKPOINT_COMPLETE (-107)
 * once, to the resource manager, with the bool info "torpor.ckpt.registered".
 * (Under mpirun it does not: orted never completes that notification, and the
 * rank would hang in MPI_Finalize.)
 *
 * The handlers only record the event and return at once (they run on PMIx's
 * progress thread). At its next iteration boundary — the application's safe
 * point — the rank logs the event, does its "flush my files" action (appends
 * the event to its state file in -d DIR and fsyncs it), and for a checkpoint
 * answers PMIX_JCTRL_CHECKPOINT_COMPLETE with the checkpoint id. torpor freezes
 * the job only after every opted-in rank answered (or its bounded wait ended).
 *
 * The compute loop: -i iterations of one MPI_Allreduce over uint64 each, with -s
 * microseconds of sleep; rank 0 prints a deterministic checksum at the end
 * (integer arithmetic only: independent of timing, placement and events).
 *
 * Build: mpicc $(pkg-config --cflags pmix) -o ckptevents ckptevents.c $(pkg-config --libs pmix)
 */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>

#include <pmix.h>

#define PROG "ckptevents"
#define KEY_REGISTERED "torpor.ckpt.registered"

struct opts {
	uint64_t iters;
	uint64_t sleep_us;
	int no_register;
	long silent_rank; /* this rank registers but never answers; -1: none */
	const char *dir;
};

/* An event recorded by a handler, consumed by the main loop. */
struct pending {
	pthread_mutex_t mu;
	char ckpt[256];     /* checkpoint id to answer, "" if none */
	char restored[256]; /* restored-from id to log, "" if none */
};

static struct pending pend = {.mu = PTHREAD_MUTEX_INITIALIZER};
static atomic_int have_event;
static pmix_proc_t me;
static int my_rank;

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " [-i iterations] [-s usec] [-n] [-q rank] [-d dir] [-h]\n"
		"  -i N    iterations (default 1000, >= 1)\n"
		"  -s us   sleep per iteration in microseconds (default 0)\n"
		"  -n      do not register for checkpoint events (not waited for)\n"
		"  -q R    rank R registers but never answers a checkpoint\n"
		"  -d DIR  each rank appends the events it got to DIR/" PROG ".<rank>.log and fsyncs it\n"
		"output: '" PROG ": rank R registered', '" PROG ": rank R got checkpoint ID',\n"
		"        '" PROG ": rank R restored from ID', '" PROG ": done iters=N ranks=R checksum=0x...'\n");
}

static int parse_args(int argc, char **argv, int rank, struct opts *o)
{
	int c;
	uint64_t v;

	o->iters = 1000;
	o->sleep_us = 0;
	o->no_register = 0;
	o->silent_rank = -1;
	o->dir = NULL;
	opterr = 0;
	while ((c = getopt(argc, argv, ":i:s:nq:d:h")) != -1) {
		switch (c) {
		case 'i':
			if (parse_u64(optarg, UINT64_C(1) << 40, &v) != 0 || v < 1)
				goto bad;
			o->iters = v;
			break;
		case 's':
			if (parse_u64(optarg, UINT64_C(3600000000), &v) != 0)
				goto bad;
			o->sleep_us = v;
			break;
		case 'q':
			if (parse_u64(optarg, INT_MAX, &v) != 0)
				goto bad;
			o->silent_rank = (long)v;
			break;
		case 'n': o->no_register = 1; break;
		case 'd': o->dir = optarg; break;
		case 'h':
			if (rank == 0)
				usage(stdout);
			return 0;
		default:
			if (rank == 0) {
				fprintf(stderr, PROG ": bad option -%c\n", optopt);
				usage(stderr);
			}
			return EXIT_USAGE;
		}
		continue;
bad:
		if (rank == 0)
			fprintf(stderr, PROG ": bad value '%s' for -%c\n", optarg, c);
		return EXIT_USAGE;
	}
	if (optind < argc) {
		if (rank == 0)
			fprintf(stderr, PROG ": unexpected argument '%s'\n", argv[optind]);
		return EXIT_USAGE;
	}
	return -1;
}

/* ckpt_id copies the PMIX_JOB_CTRL_CHECKPOINT string of an event, or "?". */
static void ckpt_id(const pmix_info_t info[], size_t ninfo, char *out, size_t n)
{
	size_t i;

	snprintf(out, n, "?");
	for (i = 0; i < ninfo; i++)
		if (PMIX_CHECK_KEY(&info[i], PMIX_JOB_CTRL_CHECKPOINT) &&
		    info[i].value.type == PMIX_STRING && info[i].value.data.string != NULL)
			snprintf(out, n, "%s", info[i].value.data.string);
}

/* on_event runs on PMIx's progress thread: record and return. */
static void on_event(size_t id, pmix_status_t status, const pmix_proc_t *source,
		     pmix_info_t info[], size_t ninfo, pmix_info_t results[], size_t nresults,
		     pmix_event_notification_cbfunc_fn_t cbfunc, void *cbdata)
{
	(void)id; (void)source; (void)results; (void)nresults;
	pthread_mutex_lock(&pend.mu);
	if (status == PMIX_JCTRL_CHECKPOINT)
		ckpt_id(info, ninfo, pend.ckpt, sizeof(pend.ckpt));
	else if (status == PMIX_ERR_PROC_RESTART)
		ckpt_id(info, ninfo, pend.restored, sizeof(pend.restored));
	pthread_mutex_unlock(&pend.mu);
	atomic_store(&have_event, 1);
	/* Handled: no other handler (Open MPI's default one) needs to see it. */
	if (cbfunc != NULL)
		cbfunc(PMIX_EVENT_ACTION_COMPLETE, NULL, 0, NULL, NULL, cbdata);
}

struct done {
	atomic_int fired;
	pmix_status_t st;
	pmix_info_t info[3]; /* must live until the callback */
};

static void notify_done(pmix_status_t st, void *cbdata)
{
	struct done *d = cbdata;
	d->st = st;
	atomic_store(&d->fired, 1);
}

/* complete sends PMIX_JCTRL_CHECKPOINT_COMPLETE to the RM (pmixd) and waits until
 * it is on its way. id NULL: the opt-in ("torpor.ckpt.registered"). */
static int complete(const char *id)
{
	bool yes = true;
	struct done *d = calloc(1, sizeof(*d));
	pmix_status_t st;

	if (d == NULL)
		return -1;
	/* NON_DEFAULT: Open MPI's default handler would abort on -107.
	 * DO_NOT_CACHE: libpmix 4.2.2's server passes a cached event neither to
	 * its host nor back to us: the callback would never come. */
	PMIX_INFO_LOAD(&d->info[0], PMIX_EVENT_NON_DEFAULT, &yes, PMIX_BOOL);
	PMIX_INFO_LOAD(&d->info[1], PMIX_EVENT_DO_NOT_CACHE, &yes, PMIX_BOOL);
	if (id == NULL)
		PMIX_INFO_LOAD(&d->info[2], KEY_REGISTERED, &yes, PMIX_BOOL);
	else
		PMIX_INFO_LOAD(&d->info[2], PMIX_JOB_CTRL_CHECKPOINT, id, PMIX_STRING);
	st = PMIx_Notify_event(PMIX_JCTRL_CHECKPOINT_COMPLETE, &me, PMIX_RANGE_RM, d->info, 3,
			       notify_done, d);
	if (st == PMIX_SUCCESS) {
		/* Bounded: a resource manager that does not take events (mpirun's
		 * orted) never calls back; d is then leaked, not freed under it. */
		for (int ms = 0; ms < 2000 && !atomic_load(&d->fired); ms++)
			sleep_us(1000);
		st = atomic_load(&d->fired) ? d->st : PMIX_ERR_TIMEOUT;
	} else if (st == PMIX_OPERATION_SUCCEEDED) {
		st = PMIX_SUCCESS;
	}
	if (st != PMIX_ERR_TIMEOUT) {
		for (int i = 0; i < 3; i++)
			PMIX_INFO_DESTRUCT(&d->info[i]);
		free(d);
	}
	if (st != PMIX_SUCCESS)
		fprintf(stderr, PROG ": rank %d: notify checkpoint complete: %s%s\n", my_rank,
			PMIx_Error_string(st),
			st == PMIX_ERR_TIMEOUT ? " (not run by torpor's pmixd? going on)" : "");
	return st == PMIX_SUCCESS ? 0 : -1;
}

/* flush_files is the application's own preparation: here, append the event to
 * the rank's state file and fsync it, so the line is on disk before it answers. */
static void flush_files(const struct opts *o, const char *what, const char *id)
{
	char path[4096], line[512];
	int fd, n;

	fflush(stdout);
	if (o->dir == NULL)
		return;
	snprintf(path, sizeof(path), "%s/" PROG ".%d.log", o->dir, my_rank);
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0) {
		fprintf(stderr, PROG ": rank %d: open %s: %s\n", my_rank, path, strerror(errno));
		return;
	}
	n = snprintf(line, sizeof(line), "%s %s\n", what, id);
	if (write(fd, line, (size_t)n) != n || fsync(fd) != 0)
		fprintf(stderr, PROG ": rank %d: write %s: %s\n", my_rank, path, strerror(errno));
	close(fd);
}

/* safe_point handles recorded events between iterations. */
static void safe_point(const struct opts *o)
{
	char ckpt[256], restored[256];

	if (!atomic_exchange(&have_event, 0))
		return;
	pthread_mutex_lock(&pend.mu);
	memcpy(ckpt, pend.ckpt, sizeof(ckpt));
	memcpy(restored, pend.restored, sizeof(restored));
	pend.ckpt[0] = pend.restored[0] = '\0';
	pthread_mutex_unlock(&pend.mu);

	if (restored[0] != '\0') {
		say(PROG ": rank %d restored from %s", my_rank, restored);
		flush_files(o, "restored", restored);
	}
	if (ckpt[0] != '\0') {
		say(PROG ": rank %d got checkpoint %s", my_rank, ckpt);
		flush_files(o, "checkpoint", ckpt);
		if (o->silent_rank == my_rank)
			say(PROG ": rank %d not answering checkpoint %s (-q)", my_rank, ckpt);
		else
			complete(ckpt);
	}
}

static int register_events(void)
{
	pmix_status_t codes[2] = {PMIX_JCTRL_CHECKPOINT, PMIX_ERR_PROC_RESTART};
	pmix_info_t info[2];
	bool yes = true;
	pmix_status_t st;
	const char *env;

	st = PMIx_Init(&me, NULL, 0); /* shares Open MPI's connection (reference counted) */
	if (st != PMIX_SUCCESS) {
		fprintf(stderr, PROG ": rank %d: PMIx_Init: %s\n", my_rank, PMIx_Error_string(st));
		return -1;
	}
	PMIX_INFO_LOAD(&info[0], PMIX_EVENT_HDLR_FIRST, &yes, PMIX_BOOL);
	PMIX_INFO_LOAD(&info[1], PMIX_EVENT_HDLR_NAME, PROG, PMIX_STRING);
	/* Blocking form (no callback): returns the handler reference, >= 0. */
	st = PMIx_Register_event_handler(codes, 2, info, 2, on_event, NULL, NULL);
	PMIX_INFO_DESTRUCT(&info[0]);
	PMIX_INFO_DESTRUCT(&info[1]);
	if (st < 0) {
		fprintf(stderr, PROG ": rank %d: register event handler: %s\n", my_rank,
			PMIx_Error_string(st));
		return -1;
	}
	env = getenv("TORPOR_CKPT_EVENTS");
	if (env == NULL || strcmp(env, "1") != 0)
		say(PROG ": rank %d registered, not opted in (TORPOR_CKPT_EVENTS unset: not under torpor)", my_rank);
	else if (complete(NULL) != 0)
		say(PROG ": rank %d registered (opt-in not acknowledged)", my_rank);
	else
		say(PROG ": rank %d registered", my_rank);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;
	int size, st, registered = 0;
	uint64_t state, it, global = 0;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &my_rank);
	MPI_Comm_size(MPI_COMM_WORLD, &size);
	setvbuf(stdout, NULL, _IOLBF, 0);

	st = parse_args(argc, argv, my_rank, &o);
	if (st >= 0) {
		MPI_Finalize();
		return st;
	}
	if (!o.no_register) {
		if (register_events() != 0)
			MPI_Abort(MPI_COMM_WORLD, 3);
		registered = 1;
	}
	if (my_rank == 0)
		say(PROG ": start ranks=%d iters=%" PRIu64 " sleep_us=%" PRIu64 " events=%s", size,
		    o.iters, o.sleep_us, o.no_register ? "off" : "on");

	state = mix64(UINT64_C(0x636b70746576) ^ (uint64_t)my_rank); /* "ckptev" */
	for (it = 1; it <= o.iters; it++) {
		uint64_t in[2], out[2];

		safe_point(&o);
		state = mix64(state ^ it);
		in[0] = state;
		in[1] = mix64(state ^ (uint64_t)my_rank);
		MPI_Allreduce(in, out, 2, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
		global = mix64(out[0] ^ rotl64(out[1], 31) ^ it);
		state = mix64(state ^ global);
		if (it < o.iters)
			sleep_us(o.sleep_us);
	}
	safe_point(&o);
	if (my_rank == 0)
		say(PROG ": done iters=%" PRIu64 " ranks=%d checksum=0x%016" PRIx64, o.iters, size,
		    global);
	if (registered)
		PMIx_Finalize(NULL, 0);
	MPI_Finalize();
	return 0;
}
