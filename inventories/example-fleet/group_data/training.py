"""Data for the training group's hosts (inventory.py); it wins over all.py."""

# Held on one driver release (unset: gpufleet's release of the default branch).
nvidia_driver_branch = "580"
nvidia_driver_version = "580.159.04"
# Reboot when a driver change needs it (default False: no reboot, the run says REBOOT REQUIRED).
gpu_reboot_allowed = True
