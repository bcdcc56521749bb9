"""Proxmox guest kinds (their own module: the action catalogue and the op record both use
them, and the op record names its action from the catalogue)."""

from __future__ import annotations

import enum


class GuestKind(enum.StrEnum):
    """Proxmox guest types."""

    QEMU = "qemu"
    LXC = "lxc"
