/* Boot-storm load generator: N simulated instances, each one TCP connection
 * from its own source address, each sending the same request sequence
 * (cloud-init's) one request at a time with keep-alive, all started at once.
 *
 * Compiled C with one epoll loop so the generator is not the bottleneck
 * (bench/metadata/run.py measures its ceiling). Prints one JSON object.
 *
 * usage: storm SERVER_IP PORT FIRST_SOURCE_IP COUNT PATHS_FILE TIMEOUT_S [REPEAT]
 *   REPEAT: run the sequence this many times per connection (ceiling runs).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXPATHS 256
#define RBUF 65536

static char *reqs[MAXPATHS];
static size_t reqlen[MAXPATHS];
static int npaths;

struct conn {
    int fd;
    int idx;            /* request index in the sequence */
    int round;
    int done;
    size_t sent;
    size_t have;
    double t0;          /* current request start */
    char buf[RBUF];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t *lat;    /* microseconds */
static size_t nlat, caplat;
static uint32_t *first_lat;   /* connect + first response, one per instance */
static size_t nfirst;
static long errors, non200, connect_errors;

static void record(double us) {
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 20;
        lat = realloc(lat, caplat * sizeof *lat);
    }
    lat[nlat++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static int cmp(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Returns the length of one complete response at the start of buf, 0 if
 * incomplete, -1 if malformed. Sets *status. */
static long complete(const char *buf, size_t have, int *status) {
    const char *end = memmem(buf, have, "\r\n\r\n", 4);
    if (!end) return 0;
    if (have < 12 || memcmp(buf, "HTTP/1.", 7)) return -1;
    *status = atoi(buf + 9);
    long clen = 0;
    const char *p = buf;
    while (p < end) {
        const char *nl = memmem(p, end - p, "\r\n", 2);
        if (!nl) nl = end;
        if (nl - p > 15 && strncasecmp(p, "content-length:", 15) == 0) clen = atol(p + 15);
        p = nl + 2;
    }
    size_t total = (end - buf) + 4 + clen;
    return have >= total ? (long)total : 0;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s SERVER_IP PORT FIRST_SOURCE_IP COUNT PATHS_FILE TIMEOUT_S [REPEAT]\n", argv[0]);
        return 2;
    }
    const char *server = argv[1];
    int port = atoi(argv[2]);
    uint32_t first = ntohl(inet_addr(argv[3]));
    int count = atoi(argv[4]);
    double timeout = atof(argv[6]);
    int repeat = argc > 7 ? atoi(argv[7]) : 1;

    FILE *f = fopen(argv[5], "r");
    if (!f) { perror("paths"); return 2; }
    char line[1024];
    while (npaths < MAXPATHS && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        char req[2048];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n"
                         "User-Agent: Cloud-Init/22.4.2\r\nAccept: */*\r\n\r\n", line, server);
        reqs[npaths] = strdup(req);
        reqlen[npaths++] = n;
    }
    fclose(f);

    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, server, &dst.sin_addr);
    int ep = epoll_create1(0);
    struct conn *conns = calloc(count, sizeof *conns);
    first_lat = calloc(count, sizeof *first_lat);
    int active = 0;
    double start = now();
    for (int i = 0; i < count; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) { perror("socket"); return 1; }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(first + i)};
        if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 1; }
        c->t0 = now();
        if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
            connect_errors++; close(c->fd); c->done = 1; continue;
        }
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        active++;
    }
    struct epoll_event evs[1024];
    while (active > 0) {
        if (now() - start > timeout) break;
        int n = epoll_wait(ep, evs, 1024, 100);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->done) continue;
            if (evs[k].events & (EPOLLERR | EPOLLHUP) && !(evs[k].events & EPOLLIN)) {
                errors++; c->done = 1; active--; close(c->fd); continue;
            }
            if ((evs[k].events & EPOLLOUT) && c->sent < reqlen[c->idx]) {
                ssize_t w = send(c->fd, reqs[c->idx] + c->sent, reqlen[c->idx] - c->sent, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { errors++; c->done = 1; active--; close(c->fd); continue; }
                if (w > 0) c->sent += w;
                if (c->sent == reqlen[c->idx]) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[k].events & EPOLLIN) {
                ssize_t r = recv(c->fd, c->buf + c->have, RBUF - c->have, 0);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    errors++; c->done = 1; active--; close(c->fd); continue;
                }
                c->have += r;
                int status = 0;
                long len = complete(c->buf, c->have, &status);
                if (len < 0) { errors++; c->done = 1; active--; close(c->fd); continue; }
                if (len == 0) continue;
                double t = now();
                record((t - c->t0) * 1e6);
                if (c->idx == 0 && c->round == 0) first_lat[nfirst++] = (uint32_t)((t - c->t0) * 1e6);
                if (status != 200) non200++;
                memmove(c->buf, c->buf + len, c->have - len);
                c->have -= len;
                c->sent = 0;
                if (++c->idx == npaths) { c->idx = 0; c->round++; }
                if (c->round == repeat) { c->done = 1; active--; close(c->fd); continue; }
                c->t0 = t;
                ssize_t w = send(c->fd, reqs[c->idx], reqlen[c->idx], MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { errors++; c->done = 1; active--; close(c->fd); continue; }
                if (w > 0) c->sent = w;
                if (c->sent < reqlen[c->idx]) {
                    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    double elapsed = now() - start;
    long unfinished = 0;
    for (int i = 0; i < count; i++) if (!conns[i].done) { unfinished++; close(conns[i].fd); }
    qsort(lat, nlat, sizeof *lat, cmp);
    qsort(first_lat, nfirst, sizeof *first_lat, cmp);
#define FPCT(p) (nfirst ? first_lat[(size_t)((nfirst - 1) * (p))] / 1000.0 : 0)
#define PCT(p) (nlat ? lat[(size_t)((nlat - 1) * (p))] / 1000.0 : 0)
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("{\"client_cpu_s\": %.3f, \"instances\": %d, \"requests\": %zu, \"seconds\": %.3f, \"rps\": %.0f, "
           "\"p50_ms\": %.2f, \"p90_ms\": %.2f, \"p99_ms\": %.2f, \"max_ms\": %.2f, "
           "\"first_p50_ms\": %.2f, \"first_p99_ms\": %.2f, \"errors\": %ld, \"non_200\": %ld, \"connect_errors\": %ld, \"unfinished\": %ld}\n",
           cpu, count, nlat, elapsed, nlat / elapsed, PCT(0.5), PCT(0.9), PCT(0.99),
           nlat ? lat[nlat - 1] / 1000.0 : 0, FPCT(0.5), FPCT(0.99), errors, non200, connect_errors, unfinished);
    return 0;
}
