/* Boot-storm load generator: N simulated instances, each one TCP connection
 * from its own source address, each sending the same request sequence
 * (cloud-init's) one request at a time with keep-alive, all started at once.
 *
 * Compiled C with one epoll loop so the generator is not the bottleneck
 * (bench/metadata/run.py measures its ceiling). Prints one JSON object.
 *
 * usage: storm SERVER_IP PORT FIRST_SOURCE_IP COUNT PATHS_FILE TIMEOUT_S [REPEAT [THINK_MS RAMP_S]]
 *   REPEAT: run the sequence this many times per connection (ceiling runs).
 *   THINK_MS: pause between an answer and the next request of an instance
 *     (paced mode: real cloud-init spends ~1 s on its sequence); 0 = none.
 *   RAMP_S: instance i starts at RAMP_S * i / COUNT (instances boot over
 *     seconds); 0 = all at once.
 * A path containing @MAC@ gets instance i's MAC (fa:16:3e + the low 24 bits
 * of i), the EC2 tree's per-interface paths.
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
    int index;          /* instance number: source FIRST + index */
    int idx;            /* request index in the sequence */
    int round;
    int done;
    size_t sent;
    size_t have;
    double t0;          /* current request start */
    size_t reqn;
    char req[2048];     /* the current request, MAC filled in */
    char buf[RBUF];
};

/* c->req = request idx of the sequence, with the instance's MAC */
static void prepare(struct conn *c) {
    const char *t = reqs[c->idx], *m = strstr(t, "@MAC@");
    if (!m) {
        memcpy(c->req, t, reqlen[c->idx]);
        c->reqn = reqlen[c->idx];
        return;
    }
    int n = snprintf(c->req, sizeof c->req, "%.*sfa:16:3e:%02x:%02x:%02x%s", (int)(m - t), t,
                     (c->index >> 16) & 0xff, (c->index >> 8) & 0xff, c->index & 0xff, m + 5);
    c->reqn = n < (int)sizeof c->req ? (size_t)n : sizeof c->req - 1;
}

/* Paced mode: instances waiting to send their next request, in due order
 * (the think time is constant, so appending keeps the order). */
struct due { struct conn *c; double at; };
static struct due *ring;
static size_t ring_head, ring_tail, ring_cap;

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
        fprintf(stderr, "usage: %s SERVER_IP PORT FIRST_SOURCE_IP COUNT PATHS_FILE TIMEOUT_S [REPEAT [THINK_MS RAMP_S]]\n", argv[0]);
        return 2;
    }
    const char *server = argv[1];
    int port = atoi(argv[2]);
    uint32_t first = ntohl(inet_addr(argv[3]));
    int count = atoi(argv[4]);
    double timeout = atof(argv[6]);
    int repeat = argc > 7 ? atoi(argv[7]) : 1;
    double think = argc > 8 ? atof(argv[8]) / 1000.0 : 0;
    double ramp = argc > 9 ? atof(argv[9]) : 0;
    struct epoll_event evs[1024];

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
    ring_cap = (size_t)count + 1;
    ring = calloc(ring_cap, sizeof *ring);
    int finished = 0, started = 0;
    double start = now();
#define FINISH(c) do { (c)->done = 1; finished++; close((c)->fd); } while (0)
#define FAIL(c) do { errors++; FINISH(c); } while (0)
    while (finished < count) {
        double t = now();
        if (t - start > timeout) break;
        /* start the instances that are due (all at once without a ramp) */
        while (started < count && (ramp <= 0 || t >= start + ramp * started / count)) {
            struct conn *c = &conns[started];
            c->index = started++;
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (c->fd < 0) { perror("socket"); return 1; }
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            struct sockaddr_in src = {.sin_family = AF_INET,
                                      .sin_addr.s_addr = htonl(first + c->index)};
            if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind"); return 1; }
            prepare(c);
            c->t0 = now();
            if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
                connect_errors++; FINISH(c); continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        }
        /* paced: send the next requests whose think time is over */
        while (ring_head != ring_tail && ring[ring_head].at <= t) {
            struct conn *c = ring[ring_head].c;
            ring_head = (ring_head + 1) % ring_cap;
            c->t0 = now();
            ssize_t w = send(c->fd, c->req, c->reqn, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) { FAIL(c); continue; }
            c->sent = w > 0 ? (size_t)w : 0;
            if (c->sent < c->reqn) {
                struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            }
        }
        int wait_ms = (think > 0 || started < count) ? 1 : 100;
        int n = epoll_wait(ep, evs, 1024, wait_ms);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            if (c->done) continue;
            if (evs[k].events & (EPOLLERR | EPOLLHUP) && !(evs[k].events & EPOLLIN)) {
                FAIL(c); continue;
            }
            if ((evs[k].events & EPOLLOUT) && c->sent < c->reqn) {
                ssize_t w = send(c->fd, c->req + c->sent, c->reqn - c->sent, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { FAIL(c); continue; }
                if (w > 0) c->sent += w;
                if (c->sent == c->reqn) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[k].events & EPOLLIN) {
                ssize_t r = recv(c->fd, c->buf + c->have, RBUF - c->have, 0);
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN) continue;
                    FAIL(c); continue;
                }
                c->have += r;
                int status = 0;
                long len = complete(c->buf, c->have, &status);
                if (len < 0) { FAIL(c); continue; }
                if (len == 0) continue;
                double tr = now();
                record((tr - c->t0) * 1e6);
                if (c->idx == 0 && c->round == 0) first_lat[nfirst++] = (uint32_t)((tr - c->t0) * 1e6);
                if (status != 200) non200++;
                memmove(c->buf, c->buf + len, c->have - len);
                c->have -= len;
                c->sent = 0;
                if (++c->idx == npaths) { c->idx = 0; c->round++; }
                if (c->round == repeat) { FINISH(c); continue; }
                prepare(c);
                if (think > 0) {
                    ring[ring_tail] = (struct due){c, tr + think};
                    ring_tail = (ring_tail + 1) % ring_cap;
                    continue;
                }
                c->t0 = tr;
                ssize_t w = send(c->fd, c->req, c->reqn, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) { FAIL(c); continue; }
                if (w > 0) c->sent = w;
                if (c->sent < c->reqn) {
                    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
    double elapsed = now() - start;
    long unfinished = 0;
    for (int i = 0; i < count; i++)
        if (!conns[i].done) { unfinished++; if (i < started) close(conns[i].fd); }
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
