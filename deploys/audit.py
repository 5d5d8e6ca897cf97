"""
`pyinfra inventories/<fleet>.py deploys/audit.py`: gpufleet's audit deploy
(gpufleet.deploys.audit), from the checkout.
"""

from gpufleet import audit
from gpufleet.facts.pyinfra_internals import register_deploy_file

# pyinfra execs this file: without this, each operation's call costs a walk of sys.modules.
register_deploy_file(__file__)
audit()
