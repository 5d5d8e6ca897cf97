"""
`pyinfra inventories/<fleet>.py deploys/verify.py`: gpufleet's verify deploy
(gpufleet.deploys.verify), from the checkout.
"""

from gpufleet import verify

verify()
