"""spikejax: E-SpikeFormer with Spike Firing Approximation in JAX / Flax NNX."""

__version__ = "0.1.0"
