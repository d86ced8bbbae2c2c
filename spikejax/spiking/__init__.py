"""Spiking primitives and neurons: SFA fire function, spike trains, dynamics, neuron classes.

Pure functions (``fire``, ``spike_train``, ``dynamics``) and the NNX neuron classes
(``neurons``) that every model family is built from; ``record`` holds what training and
analysis read back from a run (firing histograms, spike-driven op records).
"""

from spikejax.spiking.fire import (
    ROUNDINGS, WINDOWS, get_surrogate, heaviside, quantize, round_value, sfa_count, sfa_fire,
    window_mask, rectangle, sigmoid, arctan, triangle)
from spikejax.spiking.spike_train import (
    SpikeTrain, collapse_spike_train, expand_spike_train, if_soft_reset_substeps, is_train,
    nsfr_from_counts)
from spikejax.spiking.synapse import spike_einsum
from spikejax.spiking.dynamics import (
    NeuronDynamics, binary_fire, if_neuron, lif_neuron, multistep, sfa_fire_count, sfa_over_time)
from spikejax.spiking.neurons import (
    NEURONS, TEMPORAL, TEMPORAL_MODES, BinaryNeuron, Neuron, ReLUNeuron, SFANeuron, SpikeConfig,
    SubstepIF, make_neuron, temporal_dynamics, to_spike_driven)
from spikejax.spiking import record
