"""Pure functional spiking primitives: SFA fire function, spike trains, neurons over time."""

from spikejax.spiking.fire import (
    ROUNDINGS, WINDOWS, get_surrogate, heaviside, quantize, round_value, sfa_count, sfa_fire,
    window_mask, rectangle, sigmoid, arctan, triangle)
from spikejax.spiking.spike_train import (
    collapse_spike_train, expand_spike_train, if_soft_reset_substeps, nsfr_from_counts)
from spikejax.spiking.neurons import (
    NeuronDynamics, binary_fire, if_neuron, lif_neuron, multistep, sfa_fire_count, sfa_over_time)
