"""cbbench's asv suite (see asv.conf.json at the repository root). Every timing goes through
:mod:`cbbench.bench` (the timing core shared with ``cbbench bench`` and pytest-benchmark); combinations
that cannot run here (no GPU, kernels not built, peer not installed) raise NotImplementedError in
``setup`` and asv skips them."""
