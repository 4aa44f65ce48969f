"""`python -m cephnode ...` is the `cephnode` console command."""
import sys

from cephnode.node.cli import main

sys.exit(main())
