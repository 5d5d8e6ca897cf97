"""
`pyinfra inventories/<fleet>.py deploys/verify.py`: gpufleet's verify deploy
(gpufleet.deploys.verify), from the checkout.
"""

from gpufleet import verify
from gpufleet.facts.pyinfra_internals import register_deploy_file

# pyinfra execs this file: without this, each operation's call costs a walk of sys.modules.
register_deploy_file(__file__)
verify()
