"""
`pyinfra inventories/<fleet>.py deploys/driver_upgrade.py`: gpufleet's driver upgrade deploy
(gpufleet.deploys.driver_upgrade), from the checkout.
"""

from gpufleet import driver_upgrade
from gpufleet.facts.pyinfra_internals import register_deploy_file

# pyinfra execs this file: without this, each operation's call costs a walk of sys.modules.
register_deploy_file(__file__)
driver_upgrade()
