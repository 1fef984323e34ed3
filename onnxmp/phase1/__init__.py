"""Phase 1 of the paper: the sensitivity list, measured with ONNX Runtime.

This package owns everything that measures one group at one candidate against the float
network: the measurement and its resumable store entries (`sensitivity`), the jobs that walk the
float frontiers (`onnxmp.passes.frontier_walk`, shared with AdaRound) so each measurement
runs only the suffix after the group, and where the measurements run (`executors`: this process, worker
processes or Ray). It reads graph passes (`onnxmp.passes`) and records; it never chooses
bit-widths, which is the search's job (`onnxmp.search`).
"""
