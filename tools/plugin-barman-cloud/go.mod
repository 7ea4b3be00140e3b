// Wrapper module: builds CloudNativePG's barman-cloud plugin (CNPG-I) at v0.15.0: its operator
// and the sidecar it injects into instance pods run the same binary (`manager operator`,
// `manager instance`, `manager restore`). The path for WAL archiving and point-in-time recovery
// that outlives CloudNativePG's deprecated in-tree barmanObjectStore.
//
// Like tools/cloudnative-pg, it needs github.com/cloudnative-pg/machinery and
// github.com/cloudnative-pg/barman-cloud at v0.6.0, which the Go module proxy refuses: their
// v0.5.0 is built instead, with the shims of ../cloudnative-pg/shims and ./shims (see
// ./shims/README.md).
module vauban.dev/tools/plugin-barman-cloud

go 1.26.6

require github.com/cloudnative-pg/plugin-barman-cloud v0.15.0 // indirect

replace (
	github.com/cloudnative-pg/barman-cloud => ./.shimmed/barman-cloud
	github.com/cloudnative-pg/machinery => ./.shimmed/machinery
)
