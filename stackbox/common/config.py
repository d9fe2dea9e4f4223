"""Typed settings: one TOML file, validated once at start-up.

Every error names the file, the key, the bad value, why it is wrong and how to
fix it. Unknown keys are errors with a "did you mean". Settings are passed to
constructors; nothing below reads configuration on its own.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from stackbox.common import hostops

DEFAULT_CONFIG = Path("/etc/stackbox/stackbox.toml")
DEFAULT_DATA_DIR = Path("/var/lib/stackbox")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ApiSettings(_Section):
    bind_address: str = Field(
        "127.0.0.1", description="Address every API listens on (IPv4 or IPv6 literal).")
    public_base_url: str = Field(
        "", description="Base URL clients use to reach the APIs (e.g. "
        "`https://cloud.example.com`). Empty: `http://<bind_address>`. Only the "
        "scheme and host are used; each service keeps its own port.")

    @field_validator("bind_address")
    @classmethod
    def _address(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("not an IP address literal (example: 127.0.0.1, 0.0.0.0, ::1)")
        return v

    @field_validator("public_base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")


class DatabaseSettings(_Section):
    url: str = Field(
        "", description="SQLAlchemy database URL. Empty: SQLite at "
        "`<data_dir>/stackbox.sqlite` (one host). For several API hosts use "
        "PostgreSQL, e.g. `postgresql+psycopg://stackbox:secret@db/stackbox`.")

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v and not v.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql"):
            raise ValueError("scheme must be sqlite or postgresql "
                             "(e.g. postgresql+psycopg://user:pw@host/db)")
        return v


class IdentitySettings(_Section):
    port: int = Field(5000, ge=1, le=65535, description="Port of the identity API (Keystone v3).")
    region: str = Field("RegionOne", min_length=1, max_length=64,
                        description="Region name in the service catalog.")
    token_expiration: int = Field(
        3600, ge=60, le=7 * 24 * 3600, description="Lifetime of a token, in seconds.")
    signing_key_rotation: int = Field(
        24 * 3600, ge=60, description="Seconds between automatic rotations of the "
        "token signing key. Tokens signed with an older key stay valid until they expire.")
    password_hash_cost: int = Field(
        14, ge=10, le=20, description="scrypt cost as log2(N). Each step doubles the "
        "CPU and memory needed to check a password (14 = about 50 ms here).")
    password_cache_seconds: float = Field(
        300, ge=0, le=3600, description="After a password verifies, the same user and "
        "password skip the KDF for this long (kept as an HMAC under a per-process key, "
        "never the password). Clients that log in for every command, like the "
        "`openstack` CLI, then cost milliseconds. 0 disables it.")
    token_cache_seconds: float = Field(
        2.0, ge=0, le=60, description="How long a validated token's roles are cached. "
        "Revocations take effect immediately on this host regardless.")


class ImageSettings(_Section):
    port: int = Field(9292, ge=1, le=65535, description="Port of the image API (Glance v2).")
    max_project_bytes: int = Field(
        100 * 1024 ** 3, ge=0, description="Image data a project may store, in bytes, "
        "summed over its images (`image_size_total` in Glance). An upload that would "
        "exceed it is refused with 413.")
    inspect_timeout: float = Field(
        60, gt=0, le=3600, description="Seconds `qemu-img info` may take to inspect an "
        "uploaded image before the upload is refused.")


class ComputeSettings(_Section):
    port: int = Field(8774, ge=1, le=65535, description="Port of the compute API (Nova v2.1).")
    driver: Literal["qemu", "noop"] = Field(
        "qemu", description="How servers run: `qemu` (real virtual machines) or `noop` "
        "(records only, nothing runs: for control-plane benchmarks).")
    accel: Literal["auto", "kvm", "tcg"] = Field(
        "auto", description="QEMU accelerator. `auto` probes KVM once per host (a guest "
        "must boot and print) and falls back to TCG with one warning.")
    availability_zone: str = Field("nova", min_length=1, max_length=255,
                                   description="Availability zone of this compute host.")
    cpu_allocation_ratio: float = Field(16.0, gt=0, le=64,
                                        description="Virtual CPUs per host CPU for placement "
                                        "(Nova's default, 16).")
    ram_allocation_ratio: float = Field(1.5, gt=0, le=16,
                                        description="Guest RAM per host RAM for placement "
                                        "(Nova's default, 1.5).")
    disk_allocation_ratio: float = Field(
        1.0, gt=0, le=64, description="Guest disk per host disk for placement (root "
        "disks are thin qcow2 overlays, so values above 1 are common).")
    reserved_host_memory_mb: int = Field(
        512, ge=0, description="Host RAM kept out of placement for the host itself.")
    shutdown_timeout: float = Field(
        30, ge=0, le=600, description="Seconds a guest gets to power off after the ACPI "
        "power button before it is stopped hard (stop, resize, delete).")
    console_log_bytes: int = Field(
        1024 * 1024, ge=64 * 1024, description="Serial console log kept per server; "
        "older output is dropped.")
    tiny_image: bool = Field(
        True, description="Build (cached) and register the bundled `tiny` guest at "
        "start, so a first boot needs no image upload.")
    guest_cache_dir: Path | None = Field(
        None, description="Where guest image builds and the accelerator probe result "
        "are cached (default `<data_dir>/cache/guests`); several clouds on one host may "
        "share one.")
    default_flavors: bool = Field(
        True, description="Create Nova's classic flavors (m1.tiny ... m1.xlarge) and "
        "the small `c1.tiny` at first start.")
    console_port: int = Field(
        6080, ge=1, le=65535, description="Port of the console proxy: the noVNC web "
        "client, the VNC websocket and the serial-console websocket (docs/consoles.md).")
    console_token_ttl: int = Field(
        600, ge=10, le=24 * 3600, description="Seconds a console URL stays valid. Each "
        "URL works for one connection only; an open console stays open past this.")
    novnc_dir: str = Field(
        "", description="Directory holding noVNC's vnc_lite.html, vnc.html, app/ and core/. "
        "Empty: `<venv>/share/novnc` (installed by `make novnc`), else `/usr/share/novnc` "
        "(Debian's novnc package).")

    @field_validator("novnc_dir")
    @classmethod
    def _novnc(cls, v: str) -> str:
        if v and not (Path(v) / "vnc_lite.html").is_file():
            raise ValueError("no vnc_lite.html in that directory; fix: run `make novnc` "
                             "and leave this key empty, or point it at noVNC's web root")
        return v


class ObjectStoreSettings(_Section):
    port: int = Field(8080, ge=1, le=65535,
                      description="Port of the object-store API (Swift v1 and S3).")
    replicas: int = Field(
        3, ge=1, le=16, description="Replica count of the default ring that `stackbox up` "
        "creates when `<data_dir>/rings/object.ring.json` does not exist. An existing ring "
        "is never changed: use `stackbox ring` for that.")
    devices: int = Field(
        3, ge=1, le=64, description="Device directories (`<data_dir>/objects/d1`...) of the "
        "default ring, one zone each. Must be at least `replicas`.")
    part_power: int = Field(10, ge=1, le=20,
                            description="Partition power (2**N partitions) of the default ring.")
    expirer_interval: float = Field(
        30.0, gt=0, description="Seconds between passes of the object expirer (X-Delete-At).")
    auditor_bytes_per_second: int = Field(
        10 * 1024 * 1024, ge=0, description="Read rate of the object auditor, which re-hashes "
        "every object file and quarantines corrupt ones. 0 turns the auditor off.")
    auditor_interval: float = Field(
        3600.0, gt=0, description="Seconds between two object auditor passes.")
    replicator_interval: float = Field(
        300.0, gt=0, description="Seconds between two object replicator passes (which "
        "restore missing replicas and drain handoff devices).")
    workers: int = Field(
        0, ge=0, le=64, description="Processes serving the object-store port (Swift and S3). "
        "The stackbox process is one; the others are object-store workers it starts, "
        "watches and stops, sharing its listening socket. 0 = one per CPU (at most 8), so "
        "object traffic uses every core; 1 = the stackbox process alone.")

    io_uring: bool = Field(
        True, description="Flush small PUTs and DELETEs (fdatasync, directory fsync) "
        "through io_uring from each process's event loop. Where the kernel, a seccomp "
        "profile or a missing liburing package refuses it, or with false, two threads per "
        "process make the same flushes in batches (measured: 4% fewer small PUTs/s at "
        "concurrency 16, up to 30% fewer at 4; docs/objectstore.md).")

    def worker_count(self) -> int:
        return self.workers or max(1, min(8, os.cpu_count() or 1))


class NetworkSettings(_Section):
    port: int = Field(9696, ge=1, le=65535, description="Port of the network API (Neutron v2.0).")
    public_interface: str = Field(
        "", description="Host interface that carries external (floating IP) traffic. "
        "Empty: external networks are not forwarded to the uplink.")

    bridge_mappings: dict[str, str] = Field(
        {"public": "sbx-br-ex"}, description="Physical network name -> host bridge or "
        "interface that carries it (flat and VLAN provider networks, external networks). "
        "A table (`{ public = \"sbx-br-ex\", physnet2 = \"br-ex2\" }`) or Neutron's "
        "string form `\"physnet1:br-ex,physnet2:br-ex2\"`. Bridges named here that do "
        "not exist are created by the network agent.")
    tenant_network_type: Literal["local", "vxlan"] = Field(
        "local", description="Type of networks that users create without provider "
        "attributes: `local` (a bridge on each host) or `vxlan` (a VNI each, MTU "
        "`mtu` - 50, for several hosts).")
    mtu: int = Field(1500, ge=1280, le=9000, description="MTU of the physical networks "
                     "(Neutron's global_physnet_mtu); VXLAN networks get 50 less.")
    default_networks: bool = Field(
        True, description="`stackbox up` creates DevStack's networks if missing: `public` "
        "(admin, external, flat on `public_physical_network`), `private` for the demo "
        "project, and `router1` joining them with SNAT.")
    public_physical_network: str = Field(
        "public", description="The bridge_mappings key the default `public` network uses.")
    public_cidr: str = Field("172.24.4.0/24", description="Subnet of the default `public` "
                             "network (floating IPs and router gateways come from it).")
    private_cidr: str = Field("10.0.0.0/26", description="Subnet of the default `private` "
                              "network of the demo project.")

    @field_validator("bridge_mappings", mode="before")
    @classmethod
    def _mappings(cls, v):
        if isinstance(v, str):
            out = {}
            for part in filter(None, (p.strip() for p in v.split(","))):
                physnet, sep, bridge = part.partition(":")
                if not sep:
                    raise ValueError(f"'{part}' is not physnet:bridge "
                                     f"(example: physnet1:br-ex,physnet2:br-ex2)")
                if physnet.strip() in out:
                    raise ValueError(f"physical network '{physnet.strip()}' is mapped twice")
                out[physnet.strip()] = bridge.strip()
            v = out
        if not isinstance(v, dict):
            raise ValueError("must be a table of physnet = bridge, or 'physnet:bridge,...'")
        for physnet, bridge in v.items():
            if not physnet or len(physnet) > 64:
                raise ValueError(f"physical network name '{physnet}' must have 1-64 characters")
            if not isinstance(bridge, str) or not 1 <= len(bridge) <= 15 or any(
                    c in bridge for c in " /:"):
                raise ValueError(f"'{bridge}' (for {physnet}) is not a Linux interface name "
                                 f"(1-15 characters, no spaces, '/' or ':')")
        bridges = list(v.values())
        if len(set(bridges)) != len(bridges):
            raise ValueError("two physical networks map to the same bridge")
        return v

    @field_validator("public_cidr", "private_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v)
        except ValueError:
            raise ValueError("not an IPv4 network in CIDR form with no host bits "
                             "(example: 10.0.0.0/24)")
        if net.version != 4 or net.prefixlen > 29:
            raise ValueError("must be an IPv4 network of /29 or larger")
        return str(net)

    @model_validator(mode="after")
    def _defaults_fit(self):
        if self.default_networks:
            if self.public_physical_network not in self.bridge_mappings:
                raise ValueError(
                    f"public_physical_network '{self.public_physical_network}' is not a key "
                    f"of bridge_mappings (have: {', '.join(self.bridge_mappings) or 'none'})")
            if ipaddress.ip_network(self.public_cidr).overlaps(
                    ipaddress.ip_network(self.private_cidr)):
                raise ValueError(f"public_cidr {self.public_cidr} overlaps private_cidr "
                                 f"{self.private_cidr}")
        return self

    @field_validator("public_interface")
    @classmethod
    def _iface(cls, v: str) -> str:
        if v:
            have = hostops.interface_names()
            if v not in have:
                raise ValueError(f"no such interface on this host (have: {', '.join(have)})")
        return v


class MetadataSettings(_Section):
    cache_seconds: float = Field(
        5.0, ge=0, le=300, description="How long the metadata service keeps an instance's "
        "documents after looking it up (a booting guest makes ~40 requests in about a "
        "second). Changes to a server show up in guests after at most this long.")
    require_token: bool = Field(
        False, description="Serve EC2-style metadata only with an IMDSv2 session token "
        "(`PUT /latest/api/token` first). False also accepts token-less (IMDSv1) requests, "
        "which cloud-init's OpenStack datasource makes.")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level of the stackbox process.")
    max_bytes: int = Field(20 * 1024 * 1024, ge=1024 * 1024,
                           description="Rotate `<data_dir>/log/stackbox.log` at this size.")
    backups: int = Field(5, ge=1, le=100, description="Rotated log files kept.")


# The APIs this build serves, in start order; the catalog lists exactly these.
SERVED = ("identity", "image", "compute", "network", "object_store")


class Settings(_Section):
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Directory for all state: "
                           "database, keys, credentials, logs, images.")
    api: ApiSettings = ApiSettings()
    database: DatabaseSettings = DatabaseSettings()
    identity: IdentitySettings = IdentitySettings()
    image: ImageSettings = ImageSettings()
    compute: ComputeSettings = ComputeSettings()
    network: NetworkSettings = NetworkSettings()
    object_store: ObjectStoreSettings = ObjectStoreSettings()
    metadata: MetadataSettings = MetadataSettings()
    log: LogSettings = LogSettings()

    def service_ports(self) -> dict[str, int]:
        """Service name -> port, for every API this build serves."""
        return {name: getattr(self, name).port for name in SERVED}

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'stackbox.sqlite'}"

    def base_url(self, service: str) -> str:
        return self.url_for_port(self.service_ports()[service])

    def listen_ports(self) -> dict[str, int]:
        """Every port this process listens on: the APIs and the console proxy."""
        ports = self.service_ports()
        if "compute" in ports:
            ports["console"] = self.compute.console_port
        return ports

    def url_for_port(self, port: int) -> str:
        """http(s)://<public host>:<port>, as clients reach this cloud."""
        if self.api.public_base_url:
            return f"{self.api.public_base_url}:{port}"
        host = self.api.bind_address
        if host in ("0.0.0.0", "::"):
            host = socket.getfqdn()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"


class ConfigError(Exception):
    """One or more configuration problems; str() is ready to print."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def load_settings(config_file: Path | None = None, *, data_dir: Path | None = None) -> Settings:
    """Read and validate the TOML file (if any) and apply command-line overrides."""
    source = str(config_file) if config_file else "(defaults)"
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError([f"{source}: file not found; fix: create it or drop --config"])
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([f"{source}: not valid TOML: {e}; fix: correct the syntax"])
    if data_dir is not None:
        raw["data_dir"] = str(data_dir)
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError([_describe(source, err, raw) for err in e.errors()])


def _describe(source: str, err: dict, raw: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        hint = difflib.get_close_matches(loc[-1], known, n=1)
        where = f"[{'.'.join(loc[:-1])}]" if loc[:-1] else "the top level"
        fix = (f"did you mean '{hint[0]}'?" if hint
               else f"known keys in {where}: {', '.join(sorted(known))}")
        return f"{source}: {key}: unknown key; fix: {fix}"
    value = err.get("input")
    why = err["msg"].removeprefix("Value error, ")
    fix = _fix_for(loc)
    return f"{source}: {key} = {value!r}: {why}; fix: {fix}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _known_keys(loc: list[str]) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _fix_for(loc: list[str]) -> str:
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None:
        return "see docs/configuration.md"
    return f"set {'.'.join(loc)} to a valid value (default: {field.default!r}); see docs/configuration.md"


def check_host(settings: Settings, *, ports_held_by_us: bool = False) -> None:
    """Checks that need the host: data dir writable, ports free, database
    reachable. Raises ConfigError listing every problem found."""
    problems: list[str] = []
    problems += _check_data_dir(settings.data_dir)
    if not ports_held_by_us:
        for service, port in settings.listen_ports().items():
            if not port_free(settings.api.bind_address, port):
                key = "compute.console_port" if service == "console" else f"{service}.port"
                problems.append(
                    f"{key} = {port}: port already in use on "
                    f"{settings.api.bind_address}; fix: stop the process using it "
                    f"(ss -ltnp 'sport = :{port}') or set [{service}] port to a free port")
    if settings.database.url:
        problems += _check_database(settings.database.url)
    if problems:
        raise ConfigError(problems)


def _check_data_dir(path: Path) -> list[str]:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return [f"data_dir = {str(path)!r}: cannot create it ({e.strerror}); "
                f"fix: choose a writable directory with --data-dir"]
    if not os.access(path, os.W_OK | os.X_OK):
        return [f"data_dir = {str(path)!r}: not writable by uid {os.getuid()}; "
                f"fix: chown it or choose another directory with --data-dir"]
    return []


def _check_database(url: str) -> list[str]:
    from sqlalchemy import create_engine, text
    try:
        engine = create_engine(url, connect_args=_connect_timeout(url))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as e:  # any driver error means "unreachable" to the operator
        reason = str(e).strip().splitlines()[0][:300]
        return [f"database.url = {_redact(url)!r}: cannot connect ({reason}); fix: check "
                f"that the server runs and the host, port, user and password are right"]
    return []


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 5} if url.startswith("postgresql") else {}


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def render_docs() -> str:
    """docs/configuration.md, generated from the models so it cannot drift."""
    lines = ["# Configuration", "",
             "<!-- generated by `stackbox config docs`; do not edit by hand -->", "",
             "stackbox reads one TOML file (`--config FILE`, default "
             f"`{DEFAULT_CONFIG}` if it exists). Every key is optional: the defaults run "
             "a cloud on one host with no edits. Unknown keys, wrong types and values out "
             "of range stop `stackbox up` with the file, key, value, reason and a fix.", ""]
    lines += _render_section("", Settings)
    return "\n".join(lines) + "\n"


def _render_section(prefix: str, model: type[BaseModel]) -> list[str]:
    title = f"## `[{prefix}]`" if prefix else "## Top level"
    out = [title, "", "| key | type | default | meaning |", "|---|---|---|---|"]
    subs = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            subs.append((name, ann))
            continue
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        tname = getattr(ann, "__name__", None) or str(ann).replace("typing.", "")
        out.append(f"| `{name}` | {tname} | `{default!r}` | {field.description or ''} |")
    out.append("")
    for name, sub in subs:
        out += _render_section(f"{prefix}.{name}" if prefix else name, sub)
    return out
