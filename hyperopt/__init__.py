"""Hyperoptimizers: optimizers whose hyperparameters are learned by gradient descent, stacked to any height.

    import hyperopt
    opt = hyperopt.stack("Adam/SGD(1e-5)", model.parameters())   # the paper's notation
    opt = hyperopt.Adam(model.parameters(), hyper=hyperopt.SGD(lr=1e-5))   # the same, spelled out
    loss.backward(); opt.step(); opt.zero_grad()

The hypergradient is `hyperopt/hypergradient.py: hypergradient` (the chain rule between levels); each optimizer's
module (sgd.py, adam.py, adamw.py, adagrad.py, rmsprop.py) holds its update and its hypergradient's dot products
and terms.
"""

from .adagrad import AdaGrad
from .adam import Adam
from .adamw import AdamW
from .divergence import DivergenceError, OutOfRangeWarning
from .gradients import ClippedGradientWarning
from .hyperoptimizer import Hyperoptimizer
from .notation import GRAMMAR, format_stack, parse, stack
from .rmsprop import RMSProp
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "AdaGrad", "RMSProp", "Hyperoptimizer", "DivergenceError", "OutOfRangeWarning",
           "ClippedGradientWarning", "stack", "parse", "format_stack", "GRAMMAR"]
