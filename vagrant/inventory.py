"""
The Vagrant VM as a pyinfra inventory, through pyinfra's @vagrant connector (run from the
repository root after `cd vagrant && vagrant up`).
"""

import os

os.environ.setdefault("VAGRANT_CWD", os.path.dirname(os.path.abspath(__file__)))

hosts = [
    (
        "@vagrant/gpufleet-vm",
        {
            "_sudo": True,
            # NVIDIA's ubuntu2004 repository carries CUDA 11.2: the defaults apply as they are.
            "gpu_reboot_allowed": True,
        },
    )
]
