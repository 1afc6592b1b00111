"""`python -m hpod` runs the daemon, like `hpod serve`."""

from __future__ import annotations

import sys

from hpod.cli.hpod import main

sys.exit(main())
