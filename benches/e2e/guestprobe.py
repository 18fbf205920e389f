"""The guest's request/response probe: C source (a module, not a ``.c`` file, which
the repository's .gitignore would hide) and its build.

The VM guest has busybox only, no Python, so ``probes.py``'s clients cannot run
there; ``guestprobe`` does the same against ``probes.py serve``'s echo port:

    guestprobe rr  HOST PORT SIZE SECONDS MAX_ROUNDS    # ping-pong on one connection
    guestprobe crr HOST PORT SIZE SECONDS               # connect, exchange, close
    guestprobe hold HOST PORT COUNT SECONDS             # COUNT idle connections, echoing

``build(cache)`` compiles it once (``gcc -O2 -static``, dynamic if there is no
libc.a), named by the source's hash; ``vm.py`` puts it in the guest image.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

SOURCE = r"""/* Request/response probes for the VM guest (busybox only, no Python there).
 *
 *   guestprobe rr  HOST PORT SIZE SECONDS MAX_ROUNDS
 *       SIZE-byte ping-pong over one TCP connection (TCP_NODELAY), against the
 *       echo port of probes.py serve; microseconds per round trip.
 *   guestprobe crr HOST PORT SIZE SECONDS
 *       connect, SIZE bytes each way, close, in a loop (netperf's TCP_CRR);
 *       connections per second.
 *   guestprobe hold HOST PORT COUNT SECONDS
 *       COUNT connections held open (one byte sent on each), every byte that
 *       comes in echoed back, for SECONDS (benches/migrate.py: the connections
 *       a live migration carries over).
 *
 * One JSON object on stdout.  Every loop is bounded by SECONDS and a round or
 * error count; every socket call by a 3 s timeout.  guestprobe.py builds it
 * (gcc -O2 -static), vm.py puts it in the guest image.  IPv4 literals only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 100
#define MAX_ERRORS 20

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double pct(const double *v, long n, double q)
{
	long i = (long)(q * (n - 1) + 0.5);
	return v[i < 0 ? 0 : (i >= n ? n - 1 : i)];
}

static int dial(const struct sockaddr_in *sa)
{
	struct timeval tv = { 3, 0 };
	int one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		return -1;
	/* SO_SNDTIMEO bounds connect() too */
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(s, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
		int e = errno;
		close(s);
		errno = e;
		return -1;
	}
	return s;
}

/* one request out, the whole response back */
static int exchange(int s, char *buf, long size)
{
	long got = 0, sent = 0;
	while (sent < size) {
		ssize_t n = send(s, buf + sent, size - sent, MSG_NOSIGNAL);
		if (n <= 0)
			return -1;
		sent += n;
	}
	while (got < size) {
		ssize_t n = recv(s, buf + got, size - got, 0);
		if (n <= 0) {
			if (n == 0)
				errno = ECONNRESET;
			return -1;
		}
		got += n;
	}
	return 0;
}

static int fail(const char *what)
{
	printf("{\"error\": \"%s: %s\"}\n", what, strerror(errno));
	return 1;
}

static int rr(const struct sockaddr_in *sa, long size, double seconds, long max_rounds)
{
	char *buf = calloc(1, size);
	double *samples = calloc(max_rounds, sizeof(double));
	double deadline, sum = 0;
	long n = 0, i;
	int s;

	if (!buf || !samples)
		return fail("calloc");
	s = dial(sa);
	if (s < 0)
		return fail("connect");
	deadline = now() + seconds;
	for (i = 0; i < max_rounds + WARMUP; i++) {
		double t0 = now(), t1;
		if (exchange(s, buf, size) < 0)
			return fail("exchange");
		t1 = now();
		if (i >= WARMUP)
			samples[n++] = (t1 - t0) * 1e6;
		if (t1 > deadline)
			break;
	}
	close(s);
	if (!n) {
		errno = ETIMEDOUT;
		return fail("no round trips measured");
	}
	for (i = 0; i < n; i++)
		sum += samples[i];
	qsort(samples, n, sizeof(double), cmp_double);
	printf("{\"rounds\": %ld, \"size\": %ld, \"p50_us\": %.1f, \"p99_us\": %.1f, "
	       "\"mean_us\": %.1f, \"min_us\": %.1f, \"max_us\": %.1f}\n",
	       n, size, pct(samples, n, 0.5), pct(samples, n, 0.99), sum / n,
	       samples[0], samples[n - 1]);
	return 0;
}

static int crr(const struct sockaddr_in *sa, long size, double seconds)
{
	char *buf = calloc(1, size), last[160] = "";
	long ok = 0, errors = 0;
	double start = now(), deadline = start + seconds, elapsed;

	if (!buf)
		return fail("calloc");
	while (now() < deadline) {
		int s = dial(sa);
		if (s >= 0 && exchange(s, buf, size) == 0) {
			ok++;
			close(s);
			continue;
		}
		snprintf(last, sizeof(last), "%s: %s", s < 0 ? "connect" : "exchange",
			 strerror(errno));
		if (s >= 0)
			close(s);
		if (++errors >= MAX_ERRORS)
			break;
	}
	elapsed = now() - start;
	printf("{\"connections\": %ld, \"errors\": %ld, \"last_error\": \"%s\", "
	       "\"seconds\": %.3f, \"per_second\": %.1f}\n",
	       ok, errors, last, elapsed, elapsed > 0 ? ok / elapsed : 0.0);
	return 0;
}

#define HOLD_MAX 4096

static int hold(const struct sockaddr_in *sa, long count, double seconds)
{
	static struct pollfd fds[HOLD_MAX];
	struct rlimit rl = { HOLD_MAX + 16, HOLD_MAX + 16 };
	long held = 0, echoed = 0, closed = 0, i;
	double deadline;
	char buf[64];

	setrlimit(RLIMIT_NOFILE, &rl);		/* root in the guest: 1024 is too few */
	for (i = 0; i < count && i < HOLD_MAX; i++) {
		int s = dial(sa);
		if (s < 0 || write(s, "h", 1) != 1)
			return fail("connect");
		fds[held].fd = s;
		fds[held++].events = POLLIN;
	}
	printf("{\"held\": %ld}\n", held);
	fflush(stdout);
	deadline = now() + seconds;
	while (now() < deadline && closed < held) {
		int n = poll(fds, held, 100);
		for (i = 0; n > 0 && i < held; i++) {
			ssize_t got;
			if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			got = read(fds[i].fd, buf, sizeof(buf));
			if (got > 0 && write(fds[i].fd, buf, got) == got) {
				echoed += got;
				continue;
			}
			close(fds[i].fd);
			fds[i].fd = -1;		/* poll skips it from now on */
			closed++;
		}
	}
	printf("{\"held\": %ld, \"echoed\": %ld, \"closed\": %ld}\n", held, echoed, closed);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	long size;

	if (argc < 6 || (strcmp(argv[1], "rr") && strcmp(argv[1], "crr") &&
			 strcmp(argv[1], "hold")) ||
	    (!strcmp(argv[1], "rr") && argc < 7)) {
		fprintf(stderr, "usage: guestprobe rr HOST PORT SIZE SECONDS MAX_ROUNDS\n"
				"       guestprobe crr HOST PORT SIZE SECONDS\n"
				"       guestprobe hold HOST PORT COUNT SECONDS\n");
		return 2;
	}
	if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
		fprintf(stderr, "guestprobe: %s: not an IPv4 address\n", argv[2]);
		return 2;
	}
	sa.sin_port = htons(atoi(argv[3]));
	if (!strcmp(argv[1], "hold"))
		return hold(&sa, atol(argv[4]), atof(argv[5]));
	size = atol(argv[4]);
	if (size < 1 || size > (1 << 20))
		size = 64;
	if (!strcmp(argv[1], "rr")) {
		long rounds = atol(argv[6]);
		if (rounds < 1 || rounds > 10000000)
			rounds = 100000;
		return rr(&sa, size, atof(argv[5]), rounds);
	}
	return crr(&sa, size, atof(argv[5]));
}
"""


class BuildFailed(RuntimeError):
    pass


def build(cache: str, log=print) -> str:
    """The path of the compiled probe under ``cache`` (built on first use)."""
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    out = os.path.join(cache, f"guestprobe-{digest}")
    if os.path.exists(out):
        return out
    os.makedirs(cache, exist_ok=True)
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildFailed("no C compiler for the guest probe (apt-get install gcc)")
    log(f"building {out}")
    src = out + ".c"
    with open(src, "w") as f:
        f.write(SOURCE)
    err = ""
    try:
        for static in (["-static"], []):
            r = subprocess.run([cc, "-O2", "-Wall", *static, "-o", out + ".tmp", src],
                               capture_output=True, text=True, timeout=120)
            if r.returncode == 0:
                os.replace(out + ".tmp", out)
                return out
            err = r.stderr.strip()[-300:]
    finally:
        os.unlink(src)
    raise BuildFailed(f"{cc} guestprobe: {err}")
