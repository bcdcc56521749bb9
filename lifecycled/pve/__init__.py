"""The Proxmox port (a Protocol) and its adapters."""
