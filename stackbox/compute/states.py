"""Nova's server states: vm_state (where the server is), task_state (what it is
doing; the compute agent carries it out and clears it), and the API status a
client sees, derived from both."""

from __future__ import annotations

BUILDING, ACTIVE, STOPPED, PAUSED, SUSPENDED = "building", "active", "stopped", "paused", "suspended"
RESIZED, ERROR, DELETED = "resized", "error", "deleted"

# task_state values (Nova's names)
NETWORKING = "networking"     # the API is binding ports; the agent waits
SPAWNING = "spawning"
DELETING = "deleting"
POWERING_OFF, POWERING_ON = "powering-off", "powering-on"
REBOOTING, REBOOTING_HARD = "rebooting", "rebooting_hard"
PAUSING, UNPAUSING = "pausing", "unpausing"
SUSPENDING, RESUMING = "suspending", "resuming"
REBUILDING = "rebuilding"
RESIZE_PREP, RESIZE_REVERTING, RESIZE_CONFIRMING = "resize_prep", "resize_reverting", "resize_confirming"
IMAGE_SNAPSHOT = "image_snapshot"

# Nova's power_state integers
POWER = {"nostate": 0, "running": 1, "paused": 3, "shutdown": 4, "crashed": 6,
         "suspended": 7}

_TASK_STATUS = {NETWORKING: "BUILD", REBOOTING: "REBOOT", REBOOTING_HARD: "HARD_REBOOT", REBUILDING: "REBUILD",
                RESIZE_PREP: "RESIZE", RESIZE_REVERTING: "REVERT_RESIZE",
                DELETING: None}
_VM_STATUS = {BUILDING: "BUILD", ACTIVE: "ACTIVE", STOPPED: "SHUTOFF", PAUSED: "PAUSED",
              SUSPENDED: "SUSPENDED", RESIZED: "VERIFY_RESIZE", ERROR: "ERROR",
              DELETED: "DELETED"}
ALL_VM_STATES = tuple(_VM_STATUS)


def status(vm_state: str, task_state: str | None) -> str:
    """The API status, as Nova's common.status_from_state computes it."""
    if task_state in _TASK_STATUS and _TASK_STATUS[task_state]:
        return _TASK_STATUS[task_state]
    if task_state == RESIZE_CONFIRMING:
        return "ACTIVE"
    return _VM_STATUS.get(vm_state, "UNKNOWN")


# Status filter -> vm_states (Nova's status_to_states)
STATUS_FILTER = {
    "BUILD": [BUILDING], "ACTIVE": [ACTIVE], "SHUTOFF": [STOPPED], "PAUSED": [PAUSED],
    "SUSPENDED": [SUSPENDED], "VERIFY_RESIZE": [RESIZED], "ERROR": [ERROR],
    "DELETED": [DELETED], "REBOOT": [ACTIVE], "HARD_REBOOT": [ACTIVE], "REBUILD": [ACTIVE],
    "RESIZE": [ACTIVE], "REVERT_RESIZE": [RESIZED], "MIGRATING": [ACTIVE],
    "SHELVED": [], "SHELVED_OFFLOADED": [], "RESCUE": [], "SOFT_DELETED": [], "UNKNOWN": [],
    "PASSWORD": [ACTIVE], "MIGRATION": [],
}
