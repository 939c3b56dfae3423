"""``python -m denoisekit``: the command line."""

from denoisekit.cli import main

raise SystemExit(main())
