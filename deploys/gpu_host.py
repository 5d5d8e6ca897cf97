"""
`pyinfra inventories/<fleet>.py deploys/gpu_host.py`: gpufleet's gpu host deploy
(gpufleet.deploys.gpu_host), from the checkout.
"""

from gpufleet import gpu_host

gpu_host()
