"""
`pyinfra inventories/<fleet>.py deploys/gpu_host.py`: gpufleet's gpu host deploy
(gpufleet.deploys.gpu_host), from the checkout.
"""

from gpufleet import gpu_host
from gpufleet.facts.pyinfra_internals import register_deploy_file

# pyinfra execs this file: without this, each operation's call costs a walk of sys.modules.
register_deploy_file(__file__)
gpu_host()
