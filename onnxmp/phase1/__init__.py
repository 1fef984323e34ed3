"""Phase 1 of the paper: the sensitivity list, measured with ONNX Runtime.

This package owns everything that measures one group at one candidate against the float
network: the measurement and its resumable store entries (`sensitivity`), the float
frontier walk that lets each measurement run only the suffix after the group
(`frontier_walk`), and where the measurements run (`executors`: this process, worker
processes or Ray). It reads graph passes (`onnxmp.passes`) and records; it never chooses
bit-widths, which is the search's job (`onnxmp.search`).
"""
