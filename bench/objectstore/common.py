"""What the object-store benchmarks share: the systems under test (a stackbox
per replica count, the Swift 2.30 peer), server CPU from /proc, the disk's
own speed measured in the same run, and the load average.

Loopback only: every URL is 127.0.0.1 and every port a free local one.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PEER_DIR = Path(__file__).resolve().parents[2].parent.parent / "shared" / "peers" / "swift"
if not PEER_DIR.exists():
    PEER_DIR = Path("/work/shared/peers/swift")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(vals, q):
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, max(0, int(round(q / 100 * len(vals))) - 1))]


def read_into(resp, view: memoryview) -> int:
    """Read an http.client response body into `view` (1 MiB at a time, no
    copies of our own); returns the bytes read. The caller compares the
    buffer with what it sent: an md5 here would cap the client at ~700 MiB/s
    on this machine and measure the client."""
    got = 0
    while got < len(view):
        n = resp.readinto(view[got:got + (1 << 20)])
        if not n:
            break
        got += n
    return got


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _busy_and_total() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)         # idle and iowait are not busy


def _disk_sectors_written() -> int:
    """Sectors written to the machine's real disks (not loop, ram or zram
    devices: what goes through a loop device reaches a real disk too)."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if os.path.exists(f"/sys/block/{fields[2]}/device") and \
                    not fields[2].startswith(("loop", "ram", "zram")):
                total += int(fields[9])
    return total


def settle(max_wait: float = 30.0, busy_below: float = 0.15, writes_below: float = 2e6,
           window: float = 1.0) -> str:
    """Flush dirty pages (sync) and wait until the machine is quiet: less
    than `busy_below` of its CPU time busy and less than `writes_below`
    bytes/s written to its disks over `window` seconds, for at most
    `max_wait` seconds. Each measured phase then starts without the previous
    one's leftovers (dirty data, writeback, a server's deferred work), which
    would fall on whichever system runs next. (It did not explain why
    stackbox-r1's first-round small PUTs, the first phase after the warm-up,
    were its lowest of three rounds in all eight runs of 2026-12-05: the
    first runs with it showed the same.) Returns a note for the log."""
    t0 = time.monotonic()
    os.sync()
    while True:
        (b0, t_0), w0 = _busy_and_total(), _disk_sectors_written()
        time.sleep(window)
        (b1, t_1), w1 = _busy_and_total(), _disk_sectors_written()
        busy = (b1 - b0) / max(t_1 - t_0, 1)
        written = (w1 - w0) * 512 / window
        if (busy < busy_below and written < writes_below) or \
                time.monotonic() - t0 >= max_wait:
            return (f"settled {time.monotonic() - t0:.1f} s, CPU {busy:.0%} busy, "
                    f"disk writes {written / 1e6:.1f} MB/s")


def cpu_seconds(pgids: set[int]) -> float:
    """utime+stime of every process in the given process groups."""
    return sum(cpu_split(pgids))


def cpu_split(pgids: set[int]) -> tuple[float, float]:
    """(utime, stime) seconds of every process in the given process groups."""
    user = system = 0.0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[2]) in pgids:
            user += int(fields[11]) / TICK
            system += int(fields[12]) / TICK
    return user, system


def ratios(med: dict, replicas) -> list[tuple[str, str, str]]:
    """(stackbox-rN, swift-rN, "ops/s and CPU ratios") for each replica count
    both ran: like is compared with like."""
    out = []
    for r in replicas:
        mine, theirs = f"stackbox-r{r}", f"swift-r{r}"
        if mine in med and theirs in med:
            out.append((mine, theirs, f"{mine} vs {theirs}: " + " ".join(
                f"{op} {med[mine][op, 'ops'] / med[theirs][op, 'ops']:.1f}x "
                f"(cpu {med[theirs][op, 'cpu_ms'] / med[mine][op, 'cpu_ms']:.1f}x less)"
                for op in ("PUT", "GET", "DELETE"))))
    return out


def _post_json(url, body, token=None):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers, json.loads(r.read())


class Stackbox:
    """One stackbox with its own data dir and ports; `replicas` sets the
    default ring (and at least 3 device directories, as `stackbox up` makes)."""

    def __init__(self, root: Path, replicas: int):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.replicas = root, replicas
        self.name = f"stackbox-r{replicas}"
        self.data = root / "data"
        self.ports = {k: free_port() for k in ("identity", "image", "object_store", "compute",
                                               "console", "network")}
        self.config = root / "stackbox.toml"
        # every port free, so that several benchmark clouds (and a colleague's
        # cloud on the default ports) can run at once; no VMs are booted here
        self.config.write_text(
            f"[identity]\nport = {self.ports['identity']}\n"
            f"[image]\nport = {self.ports['image']}\n"
            f"[compute]\nport = {self.ports['compute']}\n"
            f"console_port = {self.ports['console']}\ndriver = \"noop\"\n"
            f"[network]\nport = {self.ports['network']}\ndefault_networks = false\n"
            f"[object_store]\nport = {self.ports['object_store']}\nreplicas = {replicas}\n"
            f"devices = {max(3, replicas)}\n")
        self.token = self.storage_path = self.pid = None
        self.user = self.project = None

    def _cli(self, *args):
        return subprocess.run([str(VENV_BIN / "stackbox"), *args, "--config", str(self.config),
                               "--data-dir", str(self.data)], capture_output=True, text=True,
                              timeout=120, check=True)

    @property
    def identity(self) -> str:
        return f"http://127.0.0.1:{self.ports['identity']}/v3"

    def start(self) -> None:
        import yaml
        self._cli("up", "--detach")
        clouds = yaml.safe_load((self.data / "clouds.yaml").read_text())["clouds"]
        password = clouds["stackbox"]["auth"]["password"]
        headers, body = _post_json(f"{self.identity}/auth/tokens", {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
        self.token = headers["X-Subject-Token"]
        self.user, self.project = body["token"]["user"]["id"], body["token"]["project"]["id"]
        url = next(e["url"] for s in body["token"]["catalog"] if s["type"] == "object-store"
                   for e in s["endpoints"] if e["interface"] == "public")
        self.storage_path = urllib.parse.urlsplit(url).path
        self.pid = int((self.data / "stackbox.pid").read_text())

    def ec2_credentials(self) -> tuple[str, str]:
        _, cred = _post_json(f"{self.identity}/users/{self.user}/credentials/OS-EC2",
                             {"tenant_id": self.project}, self.token)
        return cred["credential"]["access"], cred["credential"]["secret"]

    @property
    def port(self) -> int:
        return self.ports["object_store"]

    def pgids(self) -> set[int]:
        return {os.getpgid(self.pid)}

    def stop(self) -> None:
        # --purge: nothing this cloud made on the host (namespaces, bridges,
        # dnsmasq) outlives the benchmark
        try:
            self._cli("down", "--purge")
        except subprocess.CalledProcessError:
            pass


class Peer:
    """The Swift 2.30 peer (../shared/peers/swift), on its own base dir and
    free ports; tempauth test:tester/testing; policies r1 (default) and r3."""

    def __init__(self, base: Path):
        self.base = base
        self.env = dict(os.environ, PEER_SWIFT_BASE=str(base),
                        SWIFT_PROXY_PORT=str(free_port()), SWIFT_OBJ_PORT=str(free_port()),
                        SWIFT_CONT_PORT=str(free_port()), SWIFT_ACC_PORT=str(free_port()),
                        SWIFT_MC_PORT=str(free_port()))
        self.port = int(self.env["SWIFT_PROXY_PORT"])
        self.token = self.storage_path = None

    def start(self) -> None:
        subprocess.run([str(PEER_DIR / "start.sh")], env=self.env, check=True, timeout=300,
                       capture_output=True)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", "/auth/v1.0", headers={"X-Auth-User": "test:tester",
                                                 "X-Auth-Key": "testing"})
        r = c.getresponse()
        r.read()
        self.token = r.getheader("X-Auth-Token")
        self.storage_path = urllib.parse.urlsplit(r.getheader("X-Storage-Url")).path

    def create_container(self, name: str, policy: str) -> None:
        """A container in the given storage policy (s3api then uses it as a
        bucket: S3 has no way to choose a policy)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("PUT", f"{self.storage_path}/{name}",
                  headers={"X-Auth-Token": self.token, "X-Storage-Policy": policy})
        r = c.getresponse()
        r.read()
        assert r.status in (201, 202), r.status

    def pgids(self) -> set[int]:
        out = set()
        for f in (self.base / "run").glob("*.pid"):
            try:
                out.add(int(f.read_text().strip()))
            except ValueError:
                pass
        return out

    def stop(self) -> None:
        subprocess.run([str(PEER_DIR / "stop.sh"), "--purge"], env=self.env, timeout=120,
                       capture_output=True)


FS_CHOICES = ("xfs", "host")
FS_HELP = ("where stackbox's devices live: xfs (default), a fresh XFS on a sparse image "
           "attached with losetup --direct-io=on, as the Swift peer's start.sh mounts "
           "Swift's devices, so both systems write through the same kind of file system "
           "on the same disk; host: a directory on the file system of $TMPDIR (ext4 "
           "without a journal on the benchmark machine, where every new inode costs a scan "
           "of the recently deleted ones, see docs/objectstore.md)")


@contextmanager
def data_filesystem(root: Path, kind: str, size: str = "24G"):
    """The directory stackbox's data goes under for a run (see FS_HELP);
    the XFS image is unmounted, detached and removed afterwards."""
    if kind == "host":
        yield root, "host file system (a directory under " + str(root) + ")"
        return
    missing = [tool for tool in ("mkfs.xfs", "losetup", "mount") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        raise SystemExit(f"--fs xfs needs root and {', '.join(missing) or 'xfsprogs'} "
                         "(apt-get install xfsprogs), or use --fs host")
    img, mnt = root / "stackbox-xfs.img", root / "stackbox-xfs"
    mnt.mkdir()

    def run(*argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=check)
    run("truncate", "-s", size, str(img))
    loop = None
    try:
        run("mkfs.xfs", "-q", "-f", "-L", "sbxbench", str(img))
        loop = run("losetup", "-f", "--show", "--direct-io=on", str(img)).stdout.strip()
        run("mount", "-o", "noatime", loop, str(mnt))
        try:
            yield mnt, f"XFS image on {loop} (losetup --direct-io=on, noatime), like the peer's"
        finally:
            if run("umount", str(mnt), check=False).returncode != 0:
                run("umount", "-l", str(mnt), check=False)
    finally:
        if loop:
            run("losetup", "-d", loop, check=False)
        img.unlink(missing_ok=True)


def in_bench_dirs(prefix: str, fs: str, body) -> int:
    """body(root, data_root, fs_label) in a fresh temporary root, with
    stackbox's data under data_root (data_filesystem); all removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with data_filesystem(root, fs) as (data_root, fs_label):
            return body(root, data_root, fs_label)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def durable_creates(directory: Path, n: int = 3000, conc: int = 16, size: int = 4096) -> float:
    """What the file system allows a correct object store: files/s of
    `conc` threads each writing `size` bytes to a temp file, fdatasync, rename
    into a new hash directory, fsync of that directory (the minimum a PUT that
    is durable when acknowledged costs), with no HTTP, no database and almost
    no CPU. The small-object PUT and DELETE figures are bounded by this."""
    import threading
    root = directory / f"durable-{os.getpid()}"
    (root / "tmp").mkdir(parents=True)
    data, counter, lock = os.urandom(size), iter(range(n)), threading.Lock()

    def work():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            tmp, d = root / "tmp" / f"t{i}", root / f"p{i % 512}" / f"h{i}"
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, data)
            os.fdatasync(fd)
            os.close(fd)
            d.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, d / "x.data")
            dfd = os.open(d, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    threads = [threading.Thread(target=work) for _ in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = n / (time.perf_counter() - t0)
    shutil.rmtree(root, ignore_errors=True)
    return rate


def dd_speed(directory: Path, mib: int = 1024) -> tuple[float, float]:
    """(write MB/s, read MB/s) of the disk under `directory`, as the peer's
    baseline.sh measures it: dd of `mib` MiB of random data (from /dev/shm)
    with conv=fdatasync, then the same file read back with iflag=direct."""
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else directory
    src, f = shm / f"sbx-bench-rand-{os.getpid()}", directory / "dd-test"
    try:
        with open(src, "wb") as w:
            for _ in range(mib // 64):
                w.write(os.urandom(64 << 20))

        def dd(*args) -> float:
            out = subprocess.run(["dd", *args], capture_output=True, text=True, timeout=300,
                                 check=True).stderr.strip().splitlines()[-1]
            # "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 2.6 s, 411 MB/s"
            return int(out.split()[0]) / 1e6 / float(out.split(", ")[-2].split()[0])
        write = dd(f"if={src}", f"of={f}", "bs=1M", f"count={mib // 64 * 64}",
                   "conv=fdatasync")
        read = dd(f"if={f}", "of=/dev/null", "bs=1M", "iflag=direct")
        return write, read
    finally:
        for p in (src, f):
            p.unlink(missing_ok=True)


def disk_speed(directory: Path, *, creates_in: Path | None = None) -> dict:
    """The disk under `directory`: dd_speed of 1 GiB, and durable_creates in
    `creates_in` (default `directory`): where the object store's files go.
    dd stays on the host file system, the disk the goals name: through the
    XFS image's loop device (direct I/O) the same dd wrote 1.8 GB/s
    (495 MB/s on the host file system), which is the loop's path, not the disk."""
    write, read = dd_speed(directory, 1024)
    return {"write_fdatasync_MBps": write, "read_direct_MBps": read,
            "durable_creates": durable_creates(creates_in or directory)}
