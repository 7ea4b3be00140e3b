//go:build linux || darwin

// Vauban's compatibility shim (tools/cloudnative-pg/shims/README.md): machinery v0.6.0's
// error for a path that exists but is not a FIFO. v0.5.0's CreateFifo never returns it (it
// leaves an existing entry alone), so CloudNativePG's log pipe never takes that branch.
package compatibility

import "errors"

// ErrExistsNotFifo is returned by machinery v0.6.0's CreateFifo when the path is taken.
var ErrExistsNotFifo = errors.New("the path exists and is not a FIFO")
