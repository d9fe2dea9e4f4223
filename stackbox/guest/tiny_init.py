"""Text of the files the tiny guest runs: /init, the udhcpc script and the
small /etc files. Kept as Python strings (not package data) so they ship with
the package without build configuration, and so their text can be hashed
into the build cache key: editing a script means a new image.

Everything runs under busybox ash. Markers go to the serial console as
single lines starting with MARKER so hosts and tests can grep them.
"""

from __future__ import annotations

MARKER = "STACKBOX-TINY:"

INIT = r"""#!/bin/sh
# /init of the stackbox tiny guest (PID 1). Sets the guest up, then execs
# busybox init, which reaps orphans and keeps a getty on the console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022
CONSOLE=/dev/console
say() { echo "STACKBOX-TINY: $*" > "$CONSOLE"; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# CONFIG_DEVTMPFS_MOUNT is off in the Debian cloud kernel: mount it ourselves.
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /var/log /root/.ssh /mnt/config
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
# Prefer the first serial port for markers whatever console= says.
[ -c /dev/ttyS0 ] && CONSOLE=/dev/ttyS0
say boot
hostname -F /etc/hostname  # until metadata names the guest

# busybox insmod does not resolve dependencies: the list is in load order.
while read -r mod; do
    [ -n "$mod" ] && insmod "/lib/modules/$mod.ko" 2>/dev/null
done < /etc/tiny/modules
ip link set lo up

HAVE_NET=0
for path in /sys/class/net/eth*; do
    [ -e "$path" ] || continue
    nic=${path##*/}
    ip link set "$nic" up
    # -O staticroutes: udhcpc asks for option 121 only when told to. Without
    # -f it backgrounds once bound (and with -b also when it gives up), so
    # the lease is renewed for the life of the guest.
    udhcpc -i "$nic" -O staticroutes -s /etc/tiny/udhcpc.script \
        -t 8 -T 2 -b -p "/run/udhcpc.$nic.pid" >/dev/null 2>&1
    if ip -4 addr show dev "$nic" | grep -q ' inet '; then
        HAVE_NET=1
    else
        say "network $nic no-lease"  # udhcpc keeps trying in the background
    fi
done
[ -e /sys/class/net/eth0 ] || say "network none"

# --- metadata: config drive first, then the metadata service ----------------
MD=/run/metadata
mkdir -p "$MD"
SOURCE=none

find_config_drive() {
    dev=$(findfs LABEL=config-2 2>/dev/null)
    if [ -n "$dev" ] && mount -o ro "$dev" /mnt/config 2>/dev/null; then
        return 0
    fi
    for dev in /dev/sr* /dev/vd*; do
        [ -b "$dev" ] || continue
        if mount -o ro "$dev" /mnt/config 2>/dev/null; then
            [ -f /mnt/config/openstack/latest/meta_data.json ] && return 0
            umount /mnt/config
        fi
    done
    return 1
}

tries=0
while [ $tries -lt 5 ]; do
    if find_config_drive; then
        for f in meta_data.json user_data network_data.json; do
            [ -f "/mnt/config/openstack/latest/$f" ] && \
                cp "/mnt/config/openstack/latest/$f" "$MD/$f"
        done
        umount /mnt/config
        [ -s "$MD/meta_data.json" ] && SOURCE=configdrive && break
    fi
    # A CD-ROM may still be settling; with no candidate device give up at once.
    ls /dev/sr* /dev/vd* >/dev/null 2>&1 || break
    tries=$((tries + 1))
    sleep 0.3
done

# fetch URL FILE. busybox 1.35 `wget -T` segfaults: bound it with timeout.
fetch() {
    timeout 5 wget -q -O "$2.part" "$1" 2>/dev/null && mv "$2.part" "$2"
    rc=$?
    rm -f "$2.part"
    return $rc
}

if [ $SOURCE = none ] && [ $HAVE_NET = 1 ]; then
    base=http://169.254.169.254/openstack/latest
    for attempt in 1 2 3 4 5; do
        if fetch "$base/meta_data.json" "$MD/meta_data.json"; then
            SOURCE=metadata-service
            fetch "$base/user_data" "$MD/user_data" || true
            break
        fi
        sleep 1
    done
fi

# JSON by sed/awk: flatten to one line, pick top-level string values.
# Greedy `.*` finds the last "uuid" key, which is the top-level one in
# sorted or nova-ordered documents.
json_string() {
    sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p'
}

# Prints "name<TAB>key" for each entry of the public_keys object.
public_keys() {
    sed -n 's/.*"public_keys"[[:space:]]*:[[:space:]]*{\([^}]*\)}.*/\1/p' | awk '{
        s = $0; n = 0
        while (match(s, /"([^"\\]|\\.)*"/)) {
            tok = substr(s, RSTART + 1, RLENGTH - 2); s = substr(s, RSTART + RLENGTH)
            gsub(/\\\\/, "\001", tok); gsub(/\\n/, "", tok); gsub(/\\r/, "", tok)
            gsub(/\\\//, "/", tok); gsub(/\\"/, "\"", tok); gsub(/\001/, "\\", tok)
            if (n % 2 == 0) name = tok; else print name "\t" tok
            n++
        }
    }'
}

if [ $SOURCE != none ]; then
    flat=$(tr -d '\r\n' < "$MD/meta_data.json")
    uuid=$(printf '%s' "$flat" | json_string uuid)
    host=$(printf '%s' "$flat" | json_string hostname)
    say "metadata source=$SOURCE uuid=${uuid:-unknown}"
    if [ -n "$host" ]; then
        host=${host%%.*}
        hostname "$host"
        echo "$host" > /etc/hostname
    fi
    : > /root/.ssh/authorized_keys
    printf '%s' "$flat" | public_keys > /run/public_keys
    while IFS="$(printf '\t')" read -r name key; do
        [ -n "$key" ] || continue
        echo "$key" >> /root/.ssh/authorized_keys
        say "ssh-key installed name=$name"
    done < /run/public_keys
    chmod 700 /root/.ssh
    chmod 600 /root/.ssh/authorized_keys
else
    say "metadata none"
fi

# dropbear daemonises itself; -s: keys only, no passwords.
if dropbear -s -r /etc/dropbear/dropbear_ed25519_host_key -p 22 \
        -P /run/dropbear.pid 2>/dev/null; then
    say "sshd started"
else
    say "sshd failed"
fi

if [ -s "$MD/user_data" ] && [ "$(head -c 2 "$MD/user_data")" = "#!" ]; then
    cp "$MD/user_data" /run/user-data
    chmod 700 /run/user-data
    /run/user-data > "$CONSOLE" 2>&1 < /dev/null
    say "user-data ran rc=$?"
fi

say ready
exec /sbin/init
"""

# udhcpc calls this with $1 = deconfig|bound|renew|leasefail|nak and the
# lease in the environment ($ip, $mask as a prefix length, $router,
# $staticroutes as "net/len gw net/len gw ...", $dns, $domain).
UDHCPC_SCRIPT = r"""#!/bin/sh
say() { c=/dev/console; [ -c /dev/ttyS0 ] && c=/dev/ttyS0; echo "STACKBOX-TINY: $*" > $c; }
event=$1
case "$event" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    # Re-adding the same address would fail and flushing it drops the
    # routes, so touch the address only when it changed. Routes go in with
    # `replace`: never `ip route flush ... proto static`, which busybox
    # runs without the proto filter and so removes the connected route.
    if ! ip -4 addr show dev "$interface" | grep -q " inet $ip/$mask "; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/$mask" ${broadcast:+broadcast $broadcast} dev "$interface"
    fi
    if [ -n "$staticroutes" ]; then
        # RFC 3442: with option 121 present the router option is ignored,
        # so the default route comes from 121 as 0.0.0.0/0.
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            net=$1 gw=$2
            shift 2
            [ "$net" = 0.0.0.0/0 ] && net=default
            if [ "$gw" = 0.0.0.0 ]; then
                ip route replace "$net" dev "$interface"
            else
                ip route replace "$net" via "$gw" dev "$interface"
            fi
        done
    elif [ -n "$router" ]; then
        ip route replace default via "${router%% *}" dev "$interface"
    fi
    if [ -n "$dns" ]; then
        : > /etc/resolv.conf
        [ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
        for ns in $dns; do echo "nameserver $ns" >> /etc/resolv.conf; done
    fi
    [ "$event" = bound ] && say "network $interface $ip/$mask"
    ;;
esac
exit 0
"""

INITTAB = """::sysinit:/bin/true
ttyS0::respawn:/sbin/getty -L 115200 ttyS0 vt100
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

# root has no password ('*' is not '!', which dropbear treats as locked):
# login is by the injected SSH key only.
PASSWD = "root:x:0:0:root:/root:/bin/sh\nsshd:x:74:74::/run:/bin/false\n"
SHADOW = "root:*:19000:0:99999:7:::\n"
GROUP = "root:x:0:\ntty:x:5:\n"
# dropbear refuses users whose shell is not listed here.
SHELLS = "/bin/sh\n/bin/ash\n"
HOSTNAME = "tiny\n"
