"""``python -m cbbench ...``, and so ``torchrun --nproc_per_node=N -m cbbench train|compare ...``: the command line."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
