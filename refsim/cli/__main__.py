"""``python -m refsim.cli``: the same as the ``refsim`` command."""

from refsim.cli import main

raise SystemExit(main())
