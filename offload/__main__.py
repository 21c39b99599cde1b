"""`python -m offload ...`: the same command line as the `offload` script."""

from offload.cli import main

main()
