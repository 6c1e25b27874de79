"""An extract run: the unit plan, one work unit through every stage, the tasks, the Dask
cluster and the driver's slot queue, the output lock and the report."""
