"""
Data for every host of the fleet (pyinfra's group "all"): each module-level name is a data key.
A group's own file wins over this one; inventories/example.py and README.md ("Inventory data")
list every gpufleet key and its default.
"""

# How pyinfra connects: log in as ubuntu, run everything with sudo.
ssh_user = "ubuntu"
_sudo = True

# More /etc/docker/daemon.json keys, merged with the nvidia runtime (default: none).
docker_daemon_config = {"default-shm-size": "1G"}
