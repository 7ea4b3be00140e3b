// Wrapper module: pins and builds promtool, which the tests use to check the alert rules.
// Built by `vauban dev build` into ~/.cache/vauban/bin.
module vauban.dev/tools/promtool

go 1.26.7

require github.com/prometheus/prometheus v0.316.0 // indirect
