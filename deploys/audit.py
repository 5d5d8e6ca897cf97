"""
`pyinfra inventories/<fleet>.py deploys/audit.py`: gpufleet's audit deploy
(gpufleet.deploys.audit), from the checkout.
"""

from gpufleet import audit

audit()
