"""Offline tooling for launch configs: `autotune.report` (compile every kernel x config for a GPU
target on any machine and read registers, LDS, spills, occupancy off the ISA) and
`autotune.sweep` (time candidate configs on the GPU you have and write a tuning table that
`forge.kernels.tuning.get_config` picks up). Nothing here runs while serving."""
