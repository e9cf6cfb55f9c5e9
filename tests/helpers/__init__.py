"""Test helpers shared by the suite and the benchmarks: tie-aware k-NN comparison, the MuSc oracle
(official-code recipe), stand-in backbones."""
