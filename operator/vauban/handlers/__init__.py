"""kopf wiring only: each handler gathers inputs, calls a pure function of `vauban.reconcile`,
and publishes the result through `vauban.kube`. No decision is taken here."""
