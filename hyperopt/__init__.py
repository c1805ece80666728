"""Hyperoptimizers: optimizers whose hyperparameters are learned by gradient descent, stacked to any height.

    import hyperopt
    opt = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())   # the paper's notation
    opt = hyperopt.Adam(model.parameters(), hyper=hyperopt.SGD(lr=1e-5))   # the same, spelled out
    loss.backward(); opt.step(); opt.zero_grad()

The hypergradient is in `hyperopt/base.py` (`Hyperoptimizer._write_hypergradients`); the update rules and their
closed-form Jacobians are in `hyperopt/optimizers.py`.
"""

from .base import DivergenceError, Hyperoptimizer
from .notation import GRAMMAR, format_stack, parse, stack
from .optimizers import SGD, AdaGrad, Adam, RMSProp

__all__ = ["SGD", "Adam", "AdaGrad", "RMSProp", "Hyperoptimizer", "DivergenceError", "stack", "parse",
           "format_stack", "GRAMMAR"]
