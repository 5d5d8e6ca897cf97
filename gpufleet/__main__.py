"""`python -m gpufleet`: the `gpufleet` command."""

from gpufleet.cli import main

main()
