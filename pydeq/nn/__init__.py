from .deq import DEQ, SkipDEQ, SkipRegDEQ
from .jacobian import jacobian_frobenius

__all__ = ["DEQ", "SkipDEQ", "SkipRegDEQ", "jacobian_frobenius"]
