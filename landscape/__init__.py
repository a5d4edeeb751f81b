"""Loss-landscape analysis of certified training.

This package is deliberately free of imports, so that ``from landscape import store``
(all that :mod:`figures` needs) never loads torch.
"""
