"""The node's AI side: datasets read from the store, the model library, labels, and the
jobs that pretrain and segment (the compute itself is in ``pipelines``)."""
