/* An experiment's shim, not a part of wsgrace: LD_PRELOAD it into a server to set
 * TCP_NODELAY on every socket accept(2)/accept4(2) returns, and so measure what Nagle's
 * algorithm costs the server's small frames (issue 26, BENCHMARKS.md). It changes nothing
 * else; the server must be dynamically linked against glibc.
 *
 *   gcc -O2 -shared -fPIC -o /tmp/nodelay.so bench/nodelay/nodelay.c -ldl
 *   printf '#!/bin/sh\nLD_PRELOAD=/tmp/nodelay.so exec %s "$@"\n' "$PWD/target/release/wsgrace" > /tmp/wsgrace-nodelay
 *   chmod +x /tmp/wsgrace-nodelay
 *   target/release/loadgen --server target/release/wsgrace --compare /tmp/wsgrace-nodelay fanout 1000 3000
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
}

int accept4(int sock, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int fd = real(sock, addr, len, flags);
    nodelay(fd);
    return fd;
}

int accept(int sock, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int fd = real(sock, addr, len);
    nodelay(fd);
    return fd;
}
