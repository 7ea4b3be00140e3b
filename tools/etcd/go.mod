// Wrapper module: pins and builds etcd, the apiserver's store.
// Built by `vauban dev build` into ~/.cache/vauban/bin.
module vauban.dev/tools/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 v3.6.8
