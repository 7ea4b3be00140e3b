"""`kubectl vauban`, the kubectl plugin installed with the package (`kubectl-vauban`)."""
