"""Token group ids and the group-bias table (DESIGN §1.3, §4).

Every token of the joint sequence (text first, then image tokens) carries a group id;
the attention bias is ``B[i, j] = T[g(i), g(j)]`` with a small table ``T`` of shape
``[G, G]`` (or ``[H, G, G]`` / ``[L, H, G, G]``). The ``N×N`` matrix is never built on
fast paths. Pure numpy: the runtime, export and kernels all share these ids.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class TokenGroup(IntEnum):
    TEXT = 0
    REF_DEFECT = 1
    REF_CONTEXT = 2
    TARGET_REGION = 3
    TARGET_CONTEXT = 4


NUM_GROUPS = len(TokenGroup)
#: The paper's indicator set M = REF_DEFECT ∪ TARGET_REGION.
INDICATOR_GROUPS = (TokenGroup.REF_DEFECT, TokenGroup.TARGET_REGION)


def default_group_bias(lam: float = 1.0, num_groups: int = NUM_GROUPS) -> np.ndarray:
    """``T[a, b] = lam`` for ``a, b ∈ M``, ``0`` elsewhere; float32 ``[G, G]``."""
    table = np.zeros((num_groups, num_groups), dtype=np.float32)
    for a in INDICATOR_GROUPS:
        for b in INDICATOR_GROUPS:
            table[a, b] = lam
    return table


def text_token_groups(num_text_tokens: int) -> np.ndarray:
    """Group ids for the text part of the joint sequence (int32 ``[N_txt]``)."""
    return np.full((num_text_tokens,), int(TokenGroup.TEXT), dtype=np.int32)
