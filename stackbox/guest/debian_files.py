"""Files the debian guest gets besides its packages, and the build recipe's
constants. Kept as Python strings so their text goes into the build cache
key: editing one means a new image.
"""

from __future__ import annotations

SUITE = "bookworm"
SUITES = (SUITE, f"{SUITE}-updates", f"{SUITE}-security")
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
FS_LABEL = "sbx-root"
FS_SIZE = "2G"
# The disk is one ext4 filesystem without a partition table (an AMI-style
# image booted with kernel_id/ramdisk_id), so the root is the whole disk.
# tty0 last would make it /dev/console; ttyS0 last keeps cloud-init's
# console lines on the serial port while the VGA console still shows the
# kernel's.
# `quiet`: every kernel line on the emulated UART costs boot time under
# TCG; errors still print, and cloud-init writes to the console anyway.
CMDLINE = "root=/dev/vda rw console=tty0 console=ttyS0 quiet"
# debootstrap --include: installed from the suite with the base system.
# debootstrap does not resolve virtual packages: python3-cffi-backend
# stands for python3-cffi-backend-api-min, without which cloud-init's
# dependency on python3-cryptography stays unconfigured.
PACKAGES = (
    "systemd-sysv", "udev", "dbus", "cloud-init", "openssh-server", "ifupdown",
    "isc-dhcp-client", "iproute2", "initramfs-tools", "kmod", "sudo",
    "ca-certificates", "python3-cffi-backend", "netbase", "e2fsprogs", "linux-base",
    "zstd",  # without it initramfs-tools falls back from zstd to gzip
)
# Emptied after the build (the directories stay): nobody reads them in a
# throwaway guest, and they are a third of the image. Of usr/share/doc
# only the copyright files stay.
TRIM_DIRS = ("usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
             "var/lib/apt/lists", "var/cache/apt", "var/log", "tmp", "var/tmp")

# The initrd only has to find the root disk; udev loads everything else
# after switch_root. MODULES=most made a 52 MB initrd (every filesystem,
# network and SCSI driver) that is slow to build and to unpack under TCG.
# Root disk buses: virtio-blk, virtio-scsi, IDE, SATA (AHCI), NVMe. The
# CD-ROM driver too: cloud-init-local looks for the config drive before
# udev has loaded sr_mod in the real root, and without /dev/sr0 it settles
# for DataSourceNone.
INITRAMFS_CONF = """\
# stackbox: only the modules listed in /etc/initramfs-tools/modules.
MODULES=list
COMPRESS=zstd
"""
INITRAMFS_MODULES = """\
virtio_pci
virtio_blk
virtio_scsi
sd_mod
ata_piix
ahci
nvme
crc32c_generic
ext4
sr_mod
isofs
vfat
"""

CLOUD_CFG = """\
# stackbox debian guest: metadata sources in the order tried. The config
# drive needs nothing; the OpenStack datasource needs DMI to say OpenStack
# (QEMU -smbios type=1,product=OpenStack Nova), and None lets a guest with
# neither still finish booting.
datasource_list: [ConfigDrive, OpenStack, None]
datasource:
  OpenStack:
    # stackbox's metadata service answers at once: do not wait minutes when
    # a network has none.
    max_wait: 30
    timeout: 5
    retries: 2
# RSA host keys take seconds to make under TCG; modern clients prefer these.
ssh_genkeytypes: [ed25519, ecdsa]
# No locales package: the default en_US.UTF-8 would make cloud-init run
# locale-gen and fail; C.UTF-8 is built into libc.
locale: C.UTF-8
# `sudo` warns when the hostname cloud-init sets does not resolve.
manage_etc_hosts: true
"""

INTERFACES = """\
# cloud-init writes the guest's interfaces to interfaces.d/50-cloud-init.
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
"""

FSTAB = f"LABEL={FS_LABEL} / ext4 defaults,errors=remount-ro 0 1\n"

HOSTS = """\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""

HOSTNAME = "debian\n"
# Not the build host's: guests get DNS from their network's dnsmasq via
# DHCP. A copied resolv.conf made cloud-init stall 30 s on names.
RESOLV_CONF = ""
# Refuses service starts from package scripts inside the build chroot.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def build_files() -> dict[str, tuple[str, int]]:
    """Guest path -> (text, mode) written before the kernel is installed."""
    return {
        "etc/initramfs-tools/conf.d/stackbox.conf": (INITRAMFS_CONF, 0o644),
        "etc/initramfs-tools/modules": (INITRAMFS_MODULES, 0o644),
    }


def files() -> dict[str, tuple[str, int]]:
    """Guest path -> (text, mode) written into the root after packages."""
    return {
        "etc/cloud/cloud.cfg.d/90_stackbox.cfg": (CLOUD_CFG, 0o644),
        "etc/network/interfaces": (INTERFACES, 0o644),
        "etc/fstab": (FSTAB, 0o644),
        "etc/hosts": (HOSTS, 0o644),
        "etc/hostname": (HOSTNAME, 0o644),
        "etc/resolv.conf": (RESOLV_CONF, 0o644),
        # Empty: systemd makes a fresh id on each instance's first boot.
        "etc/machine-id": ("", 0o444),
        "etc/default/locale": ("LANG=C.UTF-8\n", 0o644),
    }


def recipe() -> dict:
    """Everything about the build besides package versions: the cache key."""
    return {"suite": SUITE, "suites": list(SUITES), "packages": list(PACKAGES),
            "kernel": KERNEL_METAPACKAGE, "cmdline": CMDLINE, "label": FS_LABEL,
            "size": FS_SIZE, "trim": list(TRIM_DIRS),
            "files": {path: [text, mode]
                      for path, (text, mode) in {**build_files(), **files()}.items()}}
