// Wrapper module: pins and builds CoreDNS (Apache-2.0), the DNS server of the local cluster's
// real node (`vauban dev up --node real`): Services and pods by name, nothing upstream.
module vauban.dev/tools/coredns

go 1.26.0

require github.com/coredns/coredns v1.15.0 // indirect
