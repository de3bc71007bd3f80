// A minimal CoreDNS for cellstack's local cluster: only the plugins its Corefile uses
// (e2e/images/coredns/Corefile), so the build pulls a fraction of CoreDNS' dependency graph
// (no cloud DNS providers) and the image holds no forwarding code at all.
//
// Built by e2e/scripts/images.sh through the Go module proxy, at the version pinned there.
// Plugin order comes from CoreDNS' own core/dnsserver.Directives; a plugin not imported here is
// simply unavailable, and a Corefile naming it fails to load.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
