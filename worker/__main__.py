"""`python -m worker` is the `guardq` command."""

from worker.cli import main

raise SystemExit(main())
