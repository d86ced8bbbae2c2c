"""Analysis of spiking models: spike-driven (binary) inference, firing statistics, energy,
effective rank (spec §1.4, §7; paper Proposition 1, Figs. 8-10, Tables I-IV).

* ``spike_driven.run(model, x) -> (logits, stats)``: the model as a binary network over the
  explicit ``T x D`` schedule; ``spike_driven.compare`` against the integer model.
* ``firing.collect(model, batches)``: per-layer firing statistics from the jitted eval step.
* ``energy.energy_report(model, shape, rates)``; CLI ``python -m spikejax.analysis.energy``.
* ``rank.effective_rank(features)`` (paper Eq. 29).
"""

from spikejax.analysis import energy, firing, rank, spike_driven
from spikejax.analysis.energy import energy_report
from spikejax.analysis.firing import FiringStats, LayerFiring, collect
from spikejax.analysis.rank import effective_rank
