"""Pure reconcile logic: observed state in, a verdict (and later desired objects or SQL plans)
out. Nothing here talks to the apiserver or a database; handlers gather the inputs."""
