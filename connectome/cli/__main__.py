"""`python -m connectome.cli`: the same entry point as the `connectome` command."""

import sys

from connectome.cli.main import main

sys.exit(main())
