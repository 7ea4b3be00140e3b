// Wrapper module: builds CloudNativePG's barman-cloud plugin (CNPG-I) at v0.15.0: its operator
// and the sidecar it injects into instance pods run the same binary (`manager operator`,
// `manager instance`, `manager restore`). The path for WAL archiving and point-in-time recovery
// that outlives CloudNativePG's deprecated in-tree barmanObjectStore.
module vauban.dev/tools/plugin-barman-cloud

go 1.26.6

require github.com/cloudnative-pg/plugin-barman-cloud v0.15.0 // indirect
