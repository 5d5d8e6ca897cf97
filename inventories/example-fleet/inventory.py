"""
An example fleet whose data lives in group data files, the way Ansible keeps group_vars beside
an inventory: copy this folder to inventories/<fleet>/, list your hosts, and run

    pyinfra inventories/<fleet>/inventory.py deploys/gpu_host.py

For each group, pyinfra reads group_data/<group>.py beside this file: all.py for every host,
training.py for the training group's hosts (README.md, "Group data").
"""

training = [
    # Host data wins over group data: this host has 8 GPUs, the others at least one.
    ("gpu-01.example.com", {"gpu_expected_count": 8}),
    "gpu-02.example.com",
]
# No group_data/inference.py: these hosts get all.py's data and gpufleet's defaults.
inference = ["gpu-10.example.com"]
