"""lifecycled: crash-safe lifecycle actions for Proxmox VE guests."""

__version__ = "0.1.0.dev0"
