"""Pure builders: spec in, the manifests Vauban applies out."""
