"""`python -m cephnode ...` is the `cephnode` console command."""
import sys

from cephnode.cli.main import main

sys.exit(main())
