// Wrapper module: pins and builds versitygw (Apache-2.0), the S3-compatible server the tests
// store backups in; it keeps objects as plain files on disk. Built by `vauban dev build`.
module vauban.dev/tools/versitygw

go 1.26.0

require github.com/versity/versitygw v1.8.0 // indirect
