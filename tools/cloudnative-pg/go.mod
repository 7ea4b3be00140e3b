// Wrapper module: builds CloudNativePG's manager (its operator, and the instance manager its
// PostgreSQL pods run) at v1.30.1, the newest release the Go module proxy serves, for the local
// cluster's real node. Its release manifest comes from the same module
// (releases/cnpg-1.30.1.yaml).
//
// Two of its dependencies are refused by the proxy at the version it requires (403 "This
// module version is not available"): github.com/cloudnative-pg/machinery v0.6.0 and
// github.com/cloudnative-pg/barman-cloud v0.6.0. They are replaced by their v0.5.0, copied by
// `vauban dev build` into .shimmed/ with the small compatibility shims of shims/ (see
// shims/README.md). The build fails loudly once the proxy serves v0.6.0: then delete shims/
// and these replace directives.
module vauban.dev/tools/cloudnative-pg

go 1.26.6

require github.com/cloudnative-pg/cloudnative-pg v1.30.1 // indirect

replace (
	github.com/cloudnative-pg/barman-cloud => ./.shimmed/barman-cloud
	github.com/cloudnative-pg/machinery => ./.shimmed/machinery
)
