"""Processing of stored instances: the job worker, what it derives, the shared filter."""
