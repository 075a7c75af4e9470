"""`python -m worker` is the `guardq` command."""

from worker.cli.main import main

raise SystemExit(main())
