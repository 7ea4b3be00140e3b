// The sandbox ("pause") container of each pod on the local cluster's real node: Vauban's own
// code, no dependency. Built by `vauban dev build` into a one-file image (devcluster/images.py).
module vauban.dev/tools/pause

go 1.26.0
