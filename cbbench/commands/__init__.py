"""Sub-commands of the ``cbbench`` CLI (see :mod:`cbbench.cli`)."""
