"""``python -m lifecycled`` runs the command line."""

from lifecycled.cli import main

main()
