// Vauban's compatibility shim (tools/cloudnative-pg/shims/README.md): machinery v0.6.0's
// options of ConfigureLogging. v0.5.0 has none; its ConfigureLogging is given a variadic
// parameter of this type by the build (a one-line edit), and ignores it.
package log

// ConfigureOption is an option of ConfigureLogging (no-op here).
type ConfigureOption func()

// WithDisabledSampling asks machinery v0.6.0 not to sample the logs of CloudNativePG's
// in-pod commands; v0.5.0 keeps its default sampling of repeated messages.
func WithDisabledSampling() ConfigureOption { return func() {} }
