// Vauban's compatibility shim (tools/cloudnative-pg/shims/README.md): barman-cloud v0.6.0's
// extra arguments of a base-backup restore. v0.5.0's DataBackupConfiguration has no such
// field, so there are none to add.
package api

// AppendRestoreAdditionalCommandArgs returns options unchanged.
func (cfg *DataBackupConfiguration) AppendRestoreAdditionalCommandArgs(options []string) []string {
	return options
}
