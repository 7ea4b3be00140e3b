// Wrapper module: pins and builds kwok, which fakes nodes and pods for the local control plane.
// Built by `vauban dev build` into ~/.cache/vauban/bin.
module vauban.dev/tools/kwok

go 1.26.0

require sigs.k8s.io/kwok v0.8.0
