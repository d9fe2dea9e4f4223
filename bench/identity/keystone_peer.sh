#!/usr/bin/env bash
# keystone_peer.sh -- a real OpenStack Keystone (Debian bookworm package
# "keystone" 2:22.0.2, i.e. Keystone Zed) running on loopback as a peer for
# the identity benchmark (bench/identity/run.py).
#
#   bench/identity/keystone_peer.sh setup    # install + configure + bootstrap (idempotent)
#   bench/identity/keystone_peer.sh start    # serve on 127.0.0.1:$KEYSTONE_PEER_PORT
#   bench/identity/keystone_peer.sh status   # exit 0 if up, prints pids/url
#   bench/identity/keystone_peer.sh stop     # stop only what `start` started
#
# Environment (all optional):
#   KEYSTONE_PEER_BASE      base dir for everything       (default /tmp/peer-keystone)
#   KEYSTONE_PEER_PORT      loopback port                 (default 15000)
#   KEYSTONE_PEER_PASSWORD  admin password for bootstrap  (default peer-admin-pw)
#   KEYSTONE_PEER_WORKERS   WSGI worker processes         (default 2)
#   KEYSTONE_PEER_THREADS   threads per worker            (default 1; Debian ships 32,
#                           which measured ~30% slower here on 2 cores)
#   KEYSTONE_PEER_CACHE     none (default, as shipped: oslo.cache enabled with the
#                           dogpile.cache.null backend, i.e. no cache) or memory
#                           (dogpile.cache.memory, per worker process; no memcached)
#
# The WSGI server is uWSGI with the python3 plugin, which is how Debian's own
# keystone package deploys Keystone (the package depends on
# uwsgi-plugin-python3 and its init script runs uwsgi with
# /etc/keystone/keystone-uwsgi.ini; it does not use apache2/mod_wsgi).
#
# Nothing here listens anywhere but 127.0.0.1:$PORT.  The package's own
# service (0.0.0.0:5000) is prevented from starting during install by a
# policy-rc.d that exits 101, and is stopped/disabled if it ever runs.
set -euo pipefail

BASE="${KEYSTONE_PEER_BASE:-/tmp/peer-keystone}"
PORT="${KEYSTONE_PEER_PORT:-15000}"
ADMIN_PASSWORD="${KEYSTONE_PEER_PASSWORD:-peer-admin-pw}"
WORKERS="${KEYSTONE_PEER_WORKERS:-2}"
THREADS="${KEYSTONE_PEER_THREADS:-1}"
CACHE="${KEYSTONE_PEER_CACHE:-none}"
HOST=127.0.0.1

CONF="$BASE/etc/keystone.conf"
PIDFILE="$BASE/run/uwsgi.pid"
LOG="$BASE/log/uwsgi.log"
KLOG="$BASE/log/keystone.log"
URL="http://$HOST:$PORT/v3"
PKGS=(keystone uwsgi-core uwsgi-plugin-python3 python3-keystone)

log() { printf '[keystone-peer] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_listeners() {  # prints "port pid" lines for the given ports that are listening
    local p
    for p in "$@"; do
        ss -Hltnp "sport = :$p" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/'"$p"' \1/p'
    done
}

guard_host_services() {
    # The keystone package ships /etc/init.d/keystone (uwsgi on 0.0.0.0:5000).
    # If anything from the package/apache2 got started, stop and disable it.
    local svc
    for svc in keystone apache2; do
        if [ -x "/etc/init.d/$svc" ]; then
            if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
                systemctl stop "$svc" >/dev/null 2>&1 || true
                systemctl disable "$svc" >/dev/null 2>&1 || true
            else
                # no systemd (container/VM init): use the sysv script directly
                if pgrep -f "/etc/keystone/keystone-uwsgi.ini" >/dev/null 2>&1 || \
                   { [ "$svc" = apache2 ] && [ -e /run/apache2/apache2.pid ]; }; then
                    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
                fi
                update-rc.d "$svc" disable >/dev/null 2>&1 || true
            fi
        fi
    done
    local left
    left="$(port_listeners 5000 80 35357)"
    if [ -n "$left" ]; then
        log "WARNING: still listening after install (port pid): $left"
        ps -o pid,cmd -p "$(echo "$left" | awk '{print $2}' | sort -u | paste -sd,)" >&2 || true
        return 1
    fi
    return 0
}

install_packages() {
    local missing=() p
    for p in "${PKGS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    command -v ss >/dev/null || missing+=(iproute2)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages already installed"
        guard_host_services || die "a service is listening on 5000/80/35357"
        return 0
    fi
    log "installing: ${missing[*]} (services blocked by policy-rc.d)"
    local prc=/usr/sbin/policy-rc.d backup=""
    if [ -e "$prc" ]; then
        backup="$(mktemp /tmp/policy-rc.d.XXXXXX)"
        cp -p "$prc" "$backup"
    fi
    printf '#!/bin/sh\n# keystone_peer.sh: never start services during install\nexit 101\n' >"$prc"
    chmod 755 "$prc"
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -o DPkg::Lock::Timeout=900 "${missing[@]}" || rc=$?
    if [ -n "$backup" ]; then mv -f "$backup" "$prc"; else rm -f "$prc"; fi
    [ "$rc" -eq 0 ] || die "apt-get install failed ($rc)"
    guard_host_services || die "a service is listening on 5000/80/35357"
}

write_conf() {
    mkdir -p "$BASE"/{etc,db,fernet-keys,credential-keys,run,log}
    chmod 700 "$BASE/fernet-keys" "$BASE/credential-keys"
    cat >"$CONF" <<EOF
# generated by bench/identity/keystone_peer.sh
[DEFAULT]
log_file = $KLOG
use_stderr = false
debug = false

[database]
connection = sqlite:///$BASE/db/keystone.db

[token]
provider = fernet
# default expiration (3600 s) as shipped

[fernet_tokens]
key_repository = $BASE/fernet-keys/
max_active_keys = 3

[fernet_receipts]
key_repository = $BASE/fernet-keys/

[credential]
key_repository = $BASE/credential-keys/

[identity]
# password_hash_algorithm = bcrypt and password_hash_rounds unset
# (bcrypt's default of 12 rounds) -- as shipped.

# [oslo_policy]: as shipped.
[cache]
EOF
    if [ "$CACHE" = memory ]; then
        printf 'enabled = true\nbackend = dogpile.cache.memory\n' >>"$CONF"
    else
        printf '# as shipped: enabled = true, backend = dogpile.cache.null (= no caching)\n' >>"$CONF"
    fi
    cat >"$BASE/etc/uwsgi.ini" <<EOF
; generated by bench/identity/keystone_peer.sh
; Modelled on Debian's /etc/keystone/keystone-uwsgi.ini + /etc/init.d/keystone
; (which runs uwsgi_python311 --http-socket :5000 --ini ...), but loopback-only,
; $WORKERS processes x $THREADS threads (Debian ships 8 x 32), everything under
; $BASE, run as root, no apparmor plugin, and without Debian's
; "rem-header = Content-Length" (it makes responses close-delimited).
[uwsgi]
plugins-dir = /usr/lib/uwsgi/plugins
plugins = python3
http-socket = $HOST:$PORT
wsgi-file = /usr/bin/keystone-wsgi-public
buffer-size = 65535
master = true
thunder-lock = true
lazy-apps = true
no-orphans = true
die-on-term = true
enable-threads = true
processes = $WORKERS
threads = $THREADS
listen = 100
name = keystone-peer
chdir = $BASE
pidfile = $PIDFILE
logto = $LOG
disable-logging = true
env = OS_KEYSTONE_CONFIG_FILES=$CONF
EOF
}

km() { keystone-manage --config-file "$CONF" "$@"; }

do_setup() {
    local t0=$SECONDS
    install_packages
    write_conf
    if [ -f "$BASE/db/.bootstrapped" ]; then
        log "already bootstrapped ($BASE); re-running db_sync/bootstrap is skipped"
    else
        rm -f "$BASE/db/keystone.db"
        log "db_sync"; km db_sync
        log "fernet_setup"; km fernet_setup --keystone-user root --keystone-group root
        log "credential_setup"; km credential_setup --keystone-user root --keystone-group root
        log "bootstrap"
        km bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
            --bootstrap-username admin --bootstrap-project-name admin \
            --bootstrap-role-name admin --bootstrap-region-id RegionOne \
            --bootstrap-public-url "$URL" --bootstrap-internal-url "$URL" \
            --bootstrap-admin-url "$URL"
        printf '%s\n' "$ADMIN_PASSWORD" >"$BASE/admin-password"
        chmod 600 "$BASE/admin-password"
        printf '%s\n' "$PORT" >"$BASE/port"
        touch "$BASE/db/.bootstrapped"
    fi
    # record the password hash algorithm/rounds actually used
    local hash
    hash="$(sqlite3 "$BASE/db/keystone.db" \
        "select p.password_hash from password p join local_user l on p.local_user_id=l.id where l.name='admin' limit 1;")"
    printf 'password_hash_prefix=%s\n' "${hash:0:7}" >"$BASE/hash-info"
    log "admin password hash: ${hash:0:7}... (\$2b\$NN = bcrypt with NN rounds)"
    log "setup done in $((SECONDS - t0)) s; base=$BASE url=$URL"
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # make sure the pid really is our uwsgi (pid reuse)
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$BASE/etc/uwsgi.ini" || return 1
    echo "$pid"
}

do_start() {
    [ -f "$BASE/db/.bootstrapped" ] || die "not set up: run '$0 setup' first"
    if pid="$(running_pid)"; then
        log "already running (master pid $pid) at $URL"
        return 0
    fi
    if [ -f "$BASE/port" ] && [ "$(cat "$BASE/port")" != "$PORT" ]; then
        log "WARNING: bootstrapped for port $(cat "$BASE/port"); the catalog endpoint points there"
    fi
    write_conf
    if [ -n "$(port_listeners "$PORT")" ]; then
        die "port $PORT already in use: $(port_listeners "$PORT")"
    fi
    log "starting uwsgi ($WORKERS workers) on $HOST:$PORT"
    uwsgi --ini "$BASE/etc/uwsgi.ini" --daemonize2 "$LOG"
    local i t0=$SECONDS
    for i in $(seq 1 120); do
        if curl -sf -o /dev/null "http://$HOST:$PORT/v3"; then
            log "up: $URL (master pid $(cat "$PIDFILE")) after ~$((SECONDS - t0)) s"
            return 0
        fi
        sleep 0.25
    done
    tail -n 30 "$LOG" >&2 || true
    die "keystone did not answer on $URL within 30 s"
}

do_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        log "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    local kids
    kids="$(pgrep -P "$pid" || true)"
    kill -INT "$pid" 2>/dev/null || true   # uwsgi master: INT/QUIT = shut down
    local i
    for i in $(seq 1 40); do
        [ -d "/proc/$pid" ] || break
        sleep 0.25
    done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    for k in $kids; do [ -d "/proc/$k" ] && kill -KILL "$k" 2>/dev/null || true; done
    rm -f "$PIDFILE"
    log "stopped (master pid $pid)"
}

do_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running master_pid=$pid workers=$(pgrep -P "$pid" | paste -sd, -) url=$URL base=$BASE"
        return 0
    fi
    echo "stopped base=$BASE"
    return 3
}

case "${1:-}" in
    setup) do_setup ;;
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    *) echo "usage: $0 {setup|start|stop|status}" >&2; exit 2 ;;
esac
