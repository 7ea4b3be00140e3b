// Vauban's compatibility shim (tools/plugin-barman-cloud/shims/README.md): barman-cloud
// v0.6.0's sentinel errors of a WAL restore. v0.5.0 reports those failures as plain errors
// that never wrap these values, so the plugin classifies them as internal errors.
package restorer

import "errors"

var (
	// ErrInvalidWALName is wrapped by v0.6.0 when barman-cloud-wal-restore exits with 3.
	ErrInvalidWALName = errors.New("invalid WAL name")
	// ErrConnectivity is wrapped by v0.6.0 when barman-cloud-wal-restore exits with 2.
	ErrConnectivity = errors.New("connectivity failure")
	// ErrGeneric is wrapped by v0.6.0 when barman-cloud-wal-restore exits with 4.
	ErrGeneric = errors.New("generic failure")
)
