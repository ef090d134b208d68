"""``python -m clipcurate``: the same entry point as the ``clipcurate`` console script."""

from clipcurate.cli.app import main

main()
