"""
`pyinfra inventories/<fleet>.py deploys/driver_upgrade.py`: gpufleet's driver upgrade deploy
(gpufleet.deploys.driver_upgrade), from the checkout.
"""

from gpufleet import driver_upgrade

driver_upgrade()
