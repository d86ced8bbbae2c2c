"""Effective rank of encoder features (paper Eq. 29; Roy and Vetterli, 2007).

For a feature matrix ``Z`` (rows: tokens or samples, columns: channels) with singular values
``sigma_i``, ``p_i = sigma_i / sum_j sigma_j`` and

    erank(Z) = exp( - sum_i p_i log p_i ),

a continuous count of the dimensions the features really use: ``1 <= erank <= rank(Z)``.
The paper tracks it during MIM pretraining (Fig. 10b: it falls with binary spikes and rises
with SFA). It lives in ``spikejax.train.metrics`` (the MIM evaluation computes it); this module
re-exports it for the analysis tools.
"""

from spikejax.train.metrics import effective_rank

__all__ = ["effective_rank"]
