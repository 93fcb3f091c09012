"""``python -m mrl`` runs the command line."""

from mrl.cli import main

main()
