"""Analysis: firing statistics, energy, spike-driven inference."""
