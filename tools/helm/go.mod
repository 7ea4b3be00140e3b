// Wrapper module: pins and builds helm, which the tests use to lint and render the chart.
// Built by `vauban dev build` into ~/.cache/vauban/bin.
module vauban.dev/tools/helm

go 1.26.0

require helm.sh/helm/v3 v3.22.0 // indirect
