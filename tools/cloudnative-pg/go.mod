// Wrapper module: builds CloudNativePG's manager (its operator, and the instance manager its
// PostgreSQL pods run) at v1.30.1, the newest release the Go module proxy serves, for the local
// cluster's real node. Its release manifest comes from the same module
// (releases/cnpg-1.30.1.yaml).
module vauban.dev/tools/cloudnative-pg

go 1.26.6

require github.com/cloudnative-pg/cloudnative-pg v1.30.1 // indirect
