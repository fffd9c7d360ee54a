"""`python -m proxy`: the same program as the `sidecar` console script."""

from proxy.cli import main

raise SystemExit(main())
