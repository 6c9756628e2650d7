"""Pure compute over arrays and files: preprocessing, the blank filter, pretraining, segmentation.

Nothing here imports the service layer (``node``), so pipelines can be tested and reused
in a notebook without a running node. Filled in by the AI issues.
"""
